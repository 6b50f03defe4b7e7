#!/usr/bin/env bash
# Starts a Docker engine when none answers, and stops only the one it started.
#
#   scripts/ensure-docker.sh start   # an engine answers afterwards (started here if none did)
#   scripts/ensure-docker.sh stop    # stops the engine `start` started; leaves any other alone
#   scripts/ensure-docker.sh run COMMAND...   # COMMAND with an engine; one started for it is stopped
#                                             # after it (pass or fail), and its exit status is COMMAND's
#
# These machines run Debian's docker.io, which nothing starts. The engine it
# starts manages no firewall (--iptables=false, --ip-masq=false: containers have
# no route out) and keeps every address inside the project's range 10.77.0.0/16:
# the default bridge is 10.77.0.0/24, and every network Docker creates (compose's,
# the deploy scripts' mm_2023) gets a /24 of 10.77.64.0/18. Its log, and the
# record that this script started it, live in the project's state folder.
set -euo pipefail

# This configuration requires a new commit to change
# shellcheck disable=SC2054  # the comma belongs to the address pool's value
DOCKERD_FLAGS=(
  --iptables=false
  --ip-masq=false
  --bip 10.77.0.1/24
  --default-address-pool base=10.77.64.0/18,size=24
)
START_TIMEOUT_SECONDS=60
# Where dockerd (default exec root) keeps the pid of the containerd it starts.
CONTAINERD_PID_FILE=/var/run/docker/containerd/containerd.pid
STOP_TIMEOUT_SECONDS=60

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="${MESSENGER_STATE_DIR:-${REPO_ROOT}/.state}/docker"
LOG_FILE="${STATE_DIR}/dockerd.log"
# Present only while an engine this script started runs: its pid.
STARTED_PID_FILE="${STATE_DIR}/dockerd.started-here.pid"

log() { printf '[ensure-docker] %s\n' "$*" >&2; }
die() {
  log "$*"
  exit 1
}

engine_answers() { timeout 10 docker info >/dev/null 2>&1; }
process_alive() { kill -0 "$1" 2>/dev/null; }
# While starting: the engine answers, or the dockerd started here has exited.
engine_up_or_gone() { engine_answers || ! process_alive "$(cat "${STARTED_PID_FILE}")"; }

wait_for() {  # seconds, command...: poll until the command succeeds
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    [ "${SECONDS}" -lt "${deadline}" ] || return 1
    sleep 0.5
  done
}

start() {
  command -v docker >/dev/null 2>&1 || die "no docker client: run 'make system-deps'"
  if engine_answers; then
    log "a Docker engine answers already"
    return 0
  fi
  command -v dockerd >/dev/null 2>&1 || die "no dockerd: run 'make system-deps' (Debian's docker.io)"
  mkdir -p "${STATE_DIR}"
  # dockerd trusts its containerd's pid file; when an earlier engine's processes
  # were all ended, that pid may belong to another process by now, and dockerd
  # would wait for it until it gives up.
  local containerd_pid
  containerd_pid="$(cat "${CONTAINERD_PID_FILE}" 2>/dev/null || true)"
  if [ -n "${containerd_pid}" ] && { [ "$(cat "/proc/${containerd_pid}/comm" 2>/dev/null)" != containerd ] ||
    [ -n "$(ip netns identify "${containerd_pid}" 2>/dev/null)" ]; }; then  # a host's (infrastructure/hosts.sh)
    rm -f "${CONTAINERD_PID_FILE}"
  fi
  log "starting dockerd (log: ${LOG_FILE})"
  # Its own session, so a Ctrl+C in the caller's terminal does not stop it.
  setsid dockerd "${DOCKERD_FLAGS[@]}" </dev/null >>"${LOG_FILE}" 2>&1 &
  echo "$!" >"${STARTED_PID_FILE}"
  if ! wait_for "${START_TIMEOUT_SECONDS}" engine_up_or_gone || ! engine_answers; then
    tail -n 30 "${LOG_FILE}" >&2 || true
    stop
    die "dockerd did not answer within ${START_TIMEOUT_SECONDS}s (log: ${LOG_FILE})"
  fi
  log "dockerd answers (pid $(cat "${STARTED_PID_FILE}"))"
}

stop() {
  if [ ! -f "${STARTED_PID_FILE}" ]; then
    log "no engine started by this script: nothing to stop"
    return 0
  fi
  local pid
  pid="$(cat "${STARTED_PID_FILE}")"
  # The record's pid must still be a dockerd: a pid is reused after its process is gone.
  if [ -n "${pid}" ] && process_alive "${pid}" && [ "$(cat "/proc/${pid}/comm" 2>/dev/null)" = dockerd ]; then
    # SIGTERM: dockerd stops its containers and its containerd, then exits.
    kill -TERM "${pid}"
    if wait_for "${STOP_TIMEOUT_SECONDS}" eval "! process_alive ${pid}"; then
      log "dockerd (pid ${pid}) stopped"
    else
      log "dockerd (pid ${pid}) still runs after ${STOP_TIMEOUT_SECONDS}s: leaving it (log: ${LOG_FILE})"
      return 1
    fi
  else
    log "the dockerd started here (pid ${pid}) is already gone"
  fi
  rm -f "${STARTED_PID_FILE}"
}

run() {  # command...
  if engine_answers; then
    "$@"
    return
  fi
  start
  trap stop EXIT
  "$@"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  run)
    shift
    [ "$#" -gt 0 ] || die "usage: $0 run COMMAND..."
    run "$@"
    ;;
  *)
    printf 'usage: %s start|stop|run COMMAND...\n' "$0" >&2
    exit 2
    ;;
esac
