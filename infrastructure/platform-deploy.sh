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
# from docker/.env, as for compose. Local runtime, one host: one Consul server
# (`-server -bootstrap-expect=1`, its KV store and catalog on disk under the
# state folder, so a restart forgets nothing) on CONSUL_PORT, unless an agent
# already answers there, and this machine's RabbitMQ. Local runtime, several
# hosts (DEPLOY_HOST, see infrastructure/hosts.sh): one Consul server on each of
# CONSUL_SERVER_HOSTS (default: DEPLOY_HOST alone), forming one raft cluster; a
# client agent on this machine (the edge) answering on CONSUL_PORT; and a
# RabbitMQ node of the platform's own on DEPLOY_HOST. Every local piece is a
# program of its host's supervisord (infrastructure/lib.sh), which starts it
# again if it dies.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

# This configuration requires a new commit to change
AMQP_PORT=5672
DOCKER_AMQP_HOST=rabbitmq     # the container's name on the network
LOCAL_AMQP_HOST=127.0.0.1     # this machine's RabbitMQ
# Several hosts: where RabbitMQ's node is installed (Debian's rabbitmq-server;
# its own script, not the wrapper that switches to the system's rabbitmq user).
RABBITMQ_SERVER=/usr/lib/rabbitmq/bin/rabbitmq-server
RABBITMQ_NODE=messenger@localhost
# NOTE: Never do this in a real-world deployment: the guest account, reachable
# from other hosts. RabbitMQ's own default allows guest on loopback only.
RABBITMQ_CONFIG="loopback_users = none"

# Several hosts: the hosts whose Consul servers form the cluster (from the
# caller), joined at Consul's standard gossip port, which every host's agent
# uses inside its namespace; a failed join is tried again this often.
read -r -a CONSUL_SERVER_HOSTS <<<"${CONSUL_SERVER_HOSTS:-${DEPLOY_HOST}}"
CONSUL_SERF_LAN_PORT=8301
CONSUL_RETRY_JOIN_INTERVAL=2s

select_runtime
require_consul_location

consul_leader_elected() {
  local leader
  # --fail: an agent that knows no server answers 500 with a message, not a leader.
  leader="$(curl --silent --fail --max-time 2 "${CONSUL_URL}/v1/status/leader" 2>/dev/null)" || return 1
  [ -n "${leader}" ] && [ "${leader}" != '""' ]
}

# The ports of a local agent other than HTTP, chosen free once and kept in a
# configuration file of its own: a server that keeps its raft data must come
# back where its peers knew it.
consul_ports_file() {  # id port-name...
  local file
  file="$(state_path platform "$1" ports.json)"
  shift
  if [ ! -s "${file}" ]; then
    mkdir -p "$(dirname "${file}")"
    local name ports='"dns": -1, "grpc": -1'
    for name in "$@"; do ports+=", \"${name}\": $(free_port)"; done
    printf '{"ports": {%s}}\n' "${ports}" >"${file}"
  fi
  echo "${file}"
}

# supervise_consul HOST ID CONFIG-FILE AGENT-ARGS...: a Consul agent whose data
# (KV store, catalog, its services and checks) lives on disk under the state
# folder, as a program of HOST's supervisord, unless it already runs.
supervise_consul() {
  local host=$1 id=$2 config=$3
  shift 3
  if instance_running platform "${id}"; then
    log "${id} is already running${host:+ on ${host}}"
    return 0
  fi
  command -v consul >/dev/null 2>&1 || die "consul not found: run 'make system-deps'"
  local envfile http_port=${HOST_CONSUL_PORT} arg
  for arg in "$@"; do
    case "${arg}" in -http-port=*) http_port=${arg#-http-port=} ;; esac
  done
  envfile="$(state_path platform "${id}" env)"
  mkdir -p "$(dirname "${envfile}")"
  printf '%s\n' "PATH=/usr/local/bin:/usr/bin:/bin" "HOME=${HOME:-/root}" >"${envfile}"
  supervise "${host}" platform "${id}" "${http_port}" "${envfile}" \
    consul agent -data-dir "$(state_path platform "${id}" data)" -config-file "${config}" -ui "$@"
}

# One Consul server per host, a client agent here, RabbitMQ on DEPLOY_HOST.
several_hosts() {
  local host address edge_address joins=()
  for host in "${CONSUL_SERVER_HOSTS[@]}"; do joins+=("-retry-join=$(host_address "${host}"):${CONSUL_SERF_LAN_PORT}"); done
  joins+=("-retry-interval=${CONSUL_RETRY_JOIN_INTERVAL}")
  for host in "${CONSUL_SERVER_HOSTS[@]}"; do
    address="$(host_address "${host}")"
    supervise_consul "${host}" "consul-${host}" "$(consul_ports_file "consul-${host}")" \
      -server "-bootstrap-expect=${#CONSUL_SERVER_HOSTS[@]}" -node "${host}" \
      -bind "${address}" -client "127.0.0.1 ${address}" "${joins[@]}"
  done
  # The edge: this machine, on the hosts' bridge (the source address of its
  # route to the first server), answering where this script reaches Consul
  # (CONSUL_PORT itself names the hosts' own agents from here on: lib.sh).
  edge_address="$(ip -4 -o route get "$(host_address "${CONSUL_SERVER_HOSTS[0]}")" |
    awk '{ for (i = 1; i < NF; i++) if ($i == "src") { print $(i + 1); exit } }')"
  [ -n "${edge_address}" ] || die "no route from this machine to ${CONSUL_SERVER_HOSTS[0]}"
  supervise_consul "" consul "$(consul_ports_file consul serf_lan)" \
    -node messenger-edge -bind "${edge_address}" -client 127.0.0.1 "-http-port=${CONSUL_URL##*:}" "${joins[@]}"

  if instance_running platform rabbitmq; then
    log "rabbitmq is already running on ${DEPLOY_HOST}"
    return 0
  fi
  [ -x "${RABBITMQ_SERVER}" ] || die "${RABBITMQ_SERVER} not found: install Debian's rabbitmq-server"
  # A node of its own: its own name, configuration, database, logs and Erlang
  # cookie (in its HOME), none of the machine's RabbitMQ files.
  local base envfile
  base="$(state_path platform rabbitmq data)"
  envfile="$(state_path platform rabbitmq env)"
  mkdir -p "${base}/mnesia" "${base}/log"
  printf '%s\n' "# Written by infrastructure/platform-deploy.sh." "${RABBITMQ_CONFIG}" \
    "listeners.tcp.default = ${AMQP_PORT}" >"${base}/rabbitmq.conf"
  : >"${base}/rabbitmq-env.conf"
  printf '%s\n' "PATH=/usr/local/bin:/usr/bin:/bin" "HOME=${base}" "LANG=C.UTF-8" \
    "RABBITMQ_NODENAME=${RABBITMQ_NODE}" "RABBITMQ_BASE=${base}" "RABBITMQ_CONFIG_FILE=${base}/rabbitmq" \
    "RABBITMQ_CONF_ENV_FILE=${base}/rabbitmq-env.conf" "RABBITMQ_MNESIA_BASE=${base}/mnesia" \
    "RABBITMQ_LOG_BASE=${base}/log" "RABBITMQ_ENABLED_PLUGINS_FILE=${base}/enabled_plugins" \
    "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=${RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS}" >"${envfile}"
  supervise "${DEPLOY_HOST}" platform rabbitmq "${AMQP_PORT}" "${envfile}" "${RABBITMQ_SERVER}"
}

if [ "${MESSENGER_RUNTIME}" = docker ]; then
  docker network inspect "${MESSENGER_DOCKER_NETWORK}" >/dev/null 2>&1 ||
    docker network create "${MESSENGER_DOCKER_NETWORK}" >/dev/null
  docker_run_once consul-server "${CONSUL_IMAGE}" \
    agent -server -bootstrap-expect=1 -ui -client=0.0.0.0 -node=consul-server
  docker_run_once consul-client -p "${CONSUL_HOST_PORT}:8500" "${CONSUL_IMAGE}" \
    agent -client=0.0.0.0 -retry-join=consul-server -node=consul-client
  docker_run_once rabbitmq -p "${RABBITMQ_HOST_PORT}:${AMQP_PORT}" -p "${RABBITMQ_MANAGEMENT_HOST_PORT}:15672" \
    -e "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=${RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS}" "${RABBITMQ_IMAGE}"
  AMQP_HOST="${DOCKER_AMQP_HOST}"
elif [ -n "${DEPLOY_HOST}" ]; then
  several_hosts
  AMQP_HOST="$(host_address "${DEPLOY_HOST}")"
else
  if consul_leader_elected; then
    log "a Consul agent already answers at ${CONSUL_URL}"
  else
    case "${CONSUL_HOST}" in
      127.* | localhost) ;;
      *) die "no Consul agent answers at ${CONSUL_URL}, and the local runtime starts one only on this machine (CONSUL_HOST=127.0.0.1)" ;;
    esac
    # Every port but HTTP is a free one (DNS and gRPC off), so this agent never
    # collides with another on the same machine.
    supervise_consul "" consul "$(consul_ports_file consul serf_lan serf_wan server)" \
      -server -bootstrap-expect=1 -client 127.0.0.1 -bind 127.0.0.1 -node messenger-platform \
      "-http-port=${CONSUL_PORT}"
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

kv_put amqp-host "${AMQP_HOST}"
kv_put amqp-port "${AMQP_PORT}"
log "platform ready: Consul at ${CONSUL_URL} (UI: ${CONSUL_URL}/ui), RabbitMQ at ${AMQP_HOST}:${AMQP_PORT}"
