#!/usr/bin/env bash
# Stops what platform-deploy.sh started: the Consul and RabbitMQ containers and
# their network (Docker runtime: containers removed, with their anonymous
# volumes), or its local Consul agent (local runtime; RabbitMQ is this
# machine's, left running as platform-deploy.sh found it). What the local
# Consul holds stays on disk under the state folder for the next start.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

select_runtime
if [ "${MESSENGER_RUNTIME}" = docker ]; then
  for name in rabbitmq consul-client consul-server; do
    docker_remove "${name}"
  done
  if docker network inspect "${MESSENGER_DOCKER_NETWORK}" >/dev/null 2>&1; then
    # Refused while a container of someone else's is still attached: say so, keep it.
    docker network rm "${MESSENGER_DOCKER_NETWORK}" >/dev/null ||
      die "network ${MESSENGER_DOCKER_NETWORK} still has containers attached: $(docker network inspect --format '{{range .Containers}}{{.Name}} {{end}}' "${MESSENGER_DOCKER_NETWORK}")"
    log "network ${MESSENGER_DOCKER_NETWORK}: removed"
  fi
else
  stop_instance platform consul
  stop_idle_supervisor
fi
