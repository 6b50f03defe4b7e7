#!/usr/bin/env bash
# Starts the machine's PostgreSQL and RabbitMQ if they are installed but
# stopped, and waits until both answer. The test suite talks to both.
set -euo pipefail

log() { printf '[ensure-services] %s\n' "$*"; }

wait_for() {  # name, seconds, command...
  local name=$1 seconds=$2
  shift 2
  for _ in $(seq 1 "$seconds"); do
    if "$@" >/dev/null 2>&1; then
      log "$name is up"
      return 0
    fi
    sleep 1
  done
  echo "$name did not come up within ${seconds}s" >&2
  return 1
}

if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    log "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sed -n 1p)" main start || true
  fi
fi
wait_for PostgreSQL 60 pg_isready -h 127.0.0.1 -p 5432 -q

if ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
  if command -v rabbitmq-server >/dev/null 2>&1; then
    log "starting RabbitMQ"
    # The schedulers' flags every RabbitMQ of the project runs with (declared in docker/.env), unless the caller set
    # its own.
    erl_args="${RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS:-$(sed -n 's/^RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=//p' \
      "$(dirname "$0")/../docker/.env")}"
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="${erl_args}" rabbitmq-server -detached || true
  fi
fi
wait_for RabbitMQ 90 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5672'
