#!/usr/bin/env bash
# The platform team's piece: a Consul agent and RabbitMQ, and the KV keys that
# tell every service where RabbitMQ is (amqp-host, amqp-port). Safe to run again.
#
#   CONSUL_HOST=127.0.0.1 CONSUL_PORT=8500 ./infrastructure/platform-deploy.sh
#
# Docker runtime: consul-server, consul-client (its HTTP port published on this
# host as CONSUL_HOST_PORT) and rabbitmq (AMQP and management published as
# RABBITMQ_HOST_PORT and RABBITMQ_MANAGEMENT_HOST_PORT), on the network
# mm_2023, as the seed's platform repository runs them; images and ports come
# from docker/.env, as for compose. Local runtime: one Consul server
# (`-server -bootstrap-expect=1`, its KV store and catalog on disk under the
# state folder, so a restart forgets nothing) on CONSUL_PORT, unless an agent
# already answers there, a program of this machine's supervisord
# (infrastructure/lib.sh), which starts it again if it dies; and this machine's
# RabbitMQ.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

# This configuration requires a new commit to change
AMQP_PORT="${RABBITMQ_PORT}"  # docker/.env's, as for compose
DOCKER_AMQP_HOST=rabbitmq     # the container's name on the network
LOCAL_AMQP_HOST=127.0.0.1     # this machine's RabbitMQ
CONSUL_ID=consul              # the local agent's program and state files

select_runtime
require_consul_location

consul_leader_elected() {
  local leader
  # --fail: an agent that knows no server answers 500 with a message, not a leader.
  leader="$(curl --silent --fail --max-time 2 "${CONSUL_URL}/v1/status/leader" 2>/dev/null)" || return 1
  [ -n "${leader}" ] && [ "${leader}" != '""' ]
}

# The agent's ports other than HTTP, chosen free once and kept in a
# configuration file of its own (DNS and gRPC off), so this agent never
# collides with another on the same machine, and comes back where it was.
consul_ports_file() {
  local file name ports='"dns": -1, "grpc": -1'
  file="$(state_path platform "${CONSUL_ID}" ports.json)"
  if [ ! -s "${file}" ]; then
    mkdir -p "$(dirname "${file}")"
    for name in serf_lan serf_wan server; do ports+=", \"${name}\": $(free_port)"; done
    printf '{"ports": {%s}}\n' "${ports}" >"${file}"
  fi
  echo "${file}"
}

# A one-server Consul whose data (KV store, catalog, its services and checks)
# lives on disk under the state folder, as a program of supervisord.
supervise_consul() {
  if instance_running platform "${CONSUL_ID}"; then
    log "${CONSUL_ID} is already running"
    return 0
  fi
  command -v consul >/dev/null 2>&1 || die "consul not found: run 'make system-deps'"
  local envfile
  envfile="$(state_path platform "${CONSUL_ID}" env)"
  mkdir -p "$(dirname "${envfile}")"
  printf '%s\n' "PATH=/usr/local/bin:/usr/bin:/bin" "HOME=${HOME:-/root}" >"${envfile}"
  supervise platform "${CONSUL_ID}" "${CONSUL_PORT}" "${envfile}" \
    consul agent -data-dir "$(state_path platform "${CONSUL_ID}" data)" -config-file "$(consul_ports_file)" -ui \
    -server -bootstrap-expect=1 -client 127.0.0.1 -bind 127.0.0.1 -node messenger-platform "-http-port=${CONSUL_PORT}"
}

if [ "${MESSENGER_RUNTIME}" = docker ]; then
  docker network inspect "${MESSENGER_DOCKER_NETWORK}" >/dev/null 2>&1 ||
    docker network create "${MESSENGER_DOCKER_NETWORK}" >/dev/null
  docker_run_once consul-server "${CONSUL_IMAGE}" \
    agent -server -bootstrap-expect=1 -ui -client=0.0.0.0 -node=consul-server
  docker_run_once consul-client -p "${CONSUL_HOST_PORT}:${CONSUL_HTTP_PORT}" "${CONSUL_IMAGE}" \
    agent -client=0.0.0.0 -retry-join=consul-server -node=consul-client
  docker_run_once rabbitmq -p "${RABBITMQ_HOST_PORT}:${AMQP_PORT}" -p "${RABBITMQ_MANAGEMENT_HOST_PORT}:${RABBITMQ_MANAGEMENT_PORT}" \
    -e "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=${RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS}" "${RABBITMQ_IMAGE}"
  AMQP_HOST="${DOCKER_AMQP_HOST}"
else
  if consul_leader_elected; then
    log "a Consul agent already answers at ${CONSUL_URL}"
  else
    case "${CONSUL_HOST}" in
      127.* | localhost) ;;
      *) die "no Consul agent answers at ${CONSUL_URL}, and the local runtime starts one only on this machine (CONSUL_HOST=127.0.0.1)" ;;
    esac
    supervise_consul
  fi
  # This machine's RabbitMQ (and PostgreSQL), started if installed but stopped.
  "${REPO_ROOT}/scripts/ensure-services.sh" >&2
  AMQP_HOST="${LOCAL_AMQP_HOST}"
fi

for _ in $(seq 1 120); do
  consul_leader_elected && break
  sleep 0.5
done
consul_leader_elected || die "Consul at ${CONSUL_URL} has no leader after 60s"

kv_put "${KV_AMQP_HOST}" "${AMQP_HOST}"
kv_put "${KV_AMQP_PORT}" "${AMQP_PORT}"
log "platform ready: Consul at ${CONSUL_URL} (UI: ${CONSUL_URL}/ui), RabbitMQ at ${AMQP_HOST}:${AMQP_PORT}"
