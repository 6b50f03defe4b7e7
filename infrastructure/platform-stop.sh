#!/usr/bin/env bash
# Stops what platform-deploy.sh started: the Consul and RabbitMQ containers
# (Docker runtime), or the local Consul agent (local runtime; this machine's
# RabbitMQ is left running, as platform-deploy.sh found it).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

select_runtime
if [ "${MESSENGER_RUNTIME}" = docker ]; then
  for name in rabbitmq consul-client consul-server; do
    if [ -n "$(docker ps --quiet --filter "name=^${name}\$")" ]; then
      docker stop "${name}" >/dev/null
      log "${name}: stopped"
    fi
  done
else
  stop_local_process platform consul
fi
