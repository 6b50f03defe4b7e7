#!/usr/bin/env bash
# The whole system on one machine, through the deploy scripts beside this file,
# in the tutorial's order. `make up`, `make down`, `make ps`, `make scale N=5`
# and `make reset-db` call it.
#
#   ./infrastructure/stack.sh up          # platform, database, migrator job, instances, worker, load balancer
#   ./infrastructure/stack.sh down        # stop everything `up` started (Docker: remove its containers, network and volumes)
#   ./infrastructure/stack.sh ps          # what runs, and its health
#   ./infrastructure/stack.sh scale N     # N serving instances (more or fewer), no restart of the rest
#   ./infrastructure/stack.sh reset-db    # empty the database and seed it again, through the migrator job
#
# Runtime as in every script here (MESSENGER_RUNTIME=docker|local; default:
# Docker when an engine answers). Consul's location comes from the caller and
# defaults to this machine's agent on 8500 (local) or the platform's
# consul-client, published on this host as CONSUL_HOST_PORT (Docker; host ports
# and image versions are docker/.env's, as for compose).
#
# HOSTS=N: the same system over N hosts of this machine, deployed on Docker
# Swarm: infrastructure/swarm.sh does it all (and `deploy`, a rolling update).
set -euo pipefail
if [ -n "${HOSTS:-}" ]; then
  case "${MESSENGER_RUNTIME:-docker}" in
    docker) exec "$(dirname "$0")/swarm.sh" "$@" ;;
    *) echo "$0: HOSTS=${HOSTS}: several hosts run on Docker Swarm (MESSENGER_RUNTIME=docker), not ${MESSENGER_RUNTIME}" >&2; exit 1 ;;
  esac
fi
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

# This configuration requires a new commit to change
INSTANCES="${STACK_INSTANCES:-3}"
DB_NAME="${MESSENGER_DB_NAME}"
MIGRATOR=messenger-migrator

select_runtime
if [ "${MESSENGER_RUNTIME}" = docker ]; then
  export CONSUL_HOST="${CONSUL_HOST:-consul-client}" CONSUL_PORT="${CONSUL_PORT:-${CONSUL_HTTP_PORT}}"
  export CONSUL_HTTP_ADDR="${CONSUL_HTTP_ADDR:-127.0.0.1:${CONSUL_HOST_PORT}}"
else
  export CONSUL_HOST="${CONSUL_HOST:-127.0.0.1}" CONSUL_PORT="${CONSUL_PORT:-${CONSUL_HTTP_PORT}}"
fi
export MESSENGER_RUNTIME LB_PORT CONSUL_HOST_PORT RABBITMQ_HOST_PORT RABBITMQ_MANAGEMENT_HOST_PORT \
  MESSENGER_DB_NAME="${DB_NAME}"
require_consul_location

step() { printf '\n==> %s\n' "$*" >&2; }

count_instances() { instances messenger | grep -c . || true; }

# The seed's challenge 4: a short-lived migrator instance runs the jobs, then stops.
run_migrator_job() {  # manage.py commands, each as one quoted string
  "${INFRA_DIR}/messenger-db-migrator-deploy.sh" >/dev/null
  # shellcheck disable=SC2317  # called by the trap
  stop_migrator() { "${INFRA_DIR}/messenger-stop.sh" --service "${MIGRATOR}" "${MIGRATOR}" || true; }
  trap stop_migrator EXIT
  local job
  for job in "$@"; do
    log "migrator job: python manage.py ${job}"
    # shellcheck disable=SC2086  # each job is a command line of words
    case "${job}" in
      create_db*) "${INFRA_DIR}/messenger-exec.sh" -e PGDATABASE=postgres -e "CREATE_DB_NAME=${DB_NAME}" \
                    "${MIGRATOR}" python manage.py ${job} ;;
      *) "${INFRA_DIR}/messenger-exec.sh" "${MIGRATOR}" python manage.py ${job} ;;
    esac
  done
  trap - EXIT
  stop_migrator
}


instance_state() {  # kind id: what its engine or supervisord says (running, exited, fatal, stopped...)
  if [ "${MESSENGER_RUNTIME}" = docker ]; then
    docker inspect --format '{{.State.Status}}' "$2" 2>/dev/null || echo gone
  else
    program_state "$2" | tr '[:upper:]' '[:lower:]'
  fi
}

live_instances() {
  local id
  while read -r id; do
    if [ -n "${id}" ] && instance_live messenger "${id}"; then echo "${id}"; fi
  done < <(instances messenger)
}

# N live serving instances: dead ones (their supervisor gave up on them) are
# removed and replaced; surplus ones leave, the highest ids first.
scale_to() {
  local want=$1 have
  mapfile -t dead < <(comm -23 <(instances messenger | sort) <(live_instances | sort))
  if [ "${#dead[@]}" -gt 0 ]; then
    log "replacing ${#dead[@]} dead instance(s): ${dead[*]}"
    "${INFRA_DIR}/messenger-stop.sh" "${dead[@]}"
  fi
  have="$(live_instances | grep -c . || true)"
  while [ "${have}" -lt "${want}" ]; do
    "${INFRA_DIR}/messenger-deploy.sh" >/dev/null
    have=$((have + 1))
  done
  local extra=()
  [ "${have}" -le "${want}" ] || mapfile -t extra < <(live_instances | sort -V | tail -n "$((have - want))")
  # The surplus stop together; each deregisters and drains before it exits.
  [ "${#extra[@]}" -eq 0 ] || "${INFRA_DIR}/messenger-stop.sh" "${extra[@]}"
}

ps_report() {
  printf '%-26s %-10s %s\n' PIECE STATE WHERE
  local leader
  leader="$(curl --silent --max-time 2 "${CONSUL_URL}/v1/status/leader" 2>/dev/null || true)"
  if [ -n "${leader}" ] && [ "${leader}" != '""' ]; then
    printf '%-26s %-10s %s\n' consul up "${CONSUL_URL}/ui"
  else
    printf '%-26s %-10s %s\n' consul down "${CONSUL_URL}"
  fi
  if [ "${MESSENGER_RUNTIME}" = local ]; then
    # The platform's programs of supervisord (none when an agent already answered).
    for id in $(local_instances platform); do
      printf '%-26s %-10s %s\n' "${id}" "$(instance_state platform "${id}")" "log $(state_path platform "${id}" log)"
    done
  fi
  local health
  health="$(curl --silent --max-time 2 "${CONSUL_URL}/v1/health/service/messenger" 2>/dev/null || echo '[]')"
  local id dead
  while read -r id; do
    [ -n "${id}" ] || continue
    printf '%-26s %-10s %s\n' "${id}" "$(check_status "${health}" "$(instance_match messenger "${id}")")" \
      "$(instance_where messenger "${id}")"
  done < <(live_instances)
  # Dead ones (their supervisor or engine gave up) are not instances any more:
  # counted, for `make scale` to replace.
  dead="$(comm -23 <(instances messenger | sort) <(live_instances | sort) | paste -sd' ' -)"
  [ -z "${dead}" ] || printf '%-26s %-10s %s\n' "dead instances" "$(wc -w <<<"${dead}")" "${dead} (make scale replaces them)"
  for id in $(instances messenger-worker); do
    printf '%-26s %-10s %s\n' "${id}" "$(instance_state messenger-worker "${id}")" "$(instance_where messenger-worker "${id}")"
  done
  # The load balancer's watcher as supervisord reports it (local), or its
  # container as the engine does; then whether it answers.
  local lb_state lb_status
  lb_state="$(instance_state load-balancer messenger-lb)"
  [ "${lb_state}" = gone ] ||
    printf '%-26s %-10s %s\n' messenger-lb "${lb_state}" "$(instance_where load-balancer messenger-lb)"
  lb_status="$(curl --silent --output /dev/null --write-out '%{http_code}' --max-time 2 "http://127.0.0.1:${LB_PORT}/health" || true)"
  if [ "${lb_status}" = 200 ]; then
    printf '%-26s %-10s %s\n' load-balancer up "http://localhost:${LB_PORT}/"
  else
    printf '%-26s %-10s %s\n' load-balancer "down" "http://localhost:${LB_PORT}/ (HTTP ${lb_status:-none})"
  fi
}

# What identifies an instance in Consul's catalog: its address and port
# (local) or its container's host name (Docker).
instance_match() {  # kind id
  if [ "${MESSENGER_RUNTIME}" = docker ]; then
    echo "host:$(docker inspect --format '{{.Config.Hostname}}' "$2" 2>/dev/null || true)"
  else
    local envfile
    envfile="$(state_path "$1" "$2" env)"
    echo "addr:$(sed -n 's/^BIND_HOST=//p' "${envfile}" 2>/dev/null || true):$(sed -n 's/^PORT=//p' "${envfile}" 2>/dev/null || true)"
  fi
}

# The status of the catalog entry matching `addr:ADDRESS:PORT` or `host:H`:
# the worst of its checks (its node's included: a lost host's instances are
# critical). An instance its supervisor started again registers anew beside
# its predecessor's entry, so the best of the matching entries counts.
check_status() {  # health-json match
  printf '%s' "$1" | python3 -c '
import json, sys
kind, _, value = sys.argv[1].partition(":")
order = {"passing": 0, "warning": 1, "critical": 2}
statuses = []
for entry in json.load(sys.stdin):
    service = entry["Service"]
    address = "{Address}:{Port}".format(**service)
    if (kind == "addr" and address == value) or (kind == "host" and value and value in service["ID"]):
        statuses.append(max((c["Status"] for c in entry["Checks"]), key=order.get, default="passing"))
print(min(statuses, key=order.get) if statuses else "unregistered")' "$2" 2>/dev/null || echo unknown
}

instance_where() {  # kind id
  if [ "${MESSENGER_RUNTIME}" = docker ]; then
    echo "container $2"
  else
    local pid envfile port address
    pid="$(running_pid "$(state_path "$1" "$2" pid)")"
    envfile="$(state_path "$1" "$2" env)"
    port="$(sed -n 's/^PORT=//p' "${envfile}" 2>/dev/null || true)"
    address="$(sed -n 's/^BIND_HOST=//p' "${envfile}" 2>/dev/null || true)"
    echo "pid ${pid:-?}${port:+, http://${address:-127.0.0.1}:${port}}, log $(state_path "$1" "$2" log)"
  fi
}

build_images() {
  step "images (make docker-images)"
  "${REPO_ROOT}/scripts/build-docker-images.sh"
}

up() {
  [ "${MESSENGER_RUNTIME}" = docker ] && build_images
  step "platform: Consul and RabbitMQ (${KV_AMQP_HOST}, ${KV_AMQP_PORT} in Consul KV)"
  "${INFRA_DIR}/platform-deploy.sh"
  step "database: roles and connection details in Consul KV"
  "${INFRA_DIR}/messenger-db-deploy.sh"
  step "migrator job: create_db, migrate, seed (as messenger-migrator), then stop it"
  run_migrator_job create_db migrate seed
  step "serving instances: ${INSTANCES} of messenger"
  scale_to "${INSTANCES}"
  step "event worker"
  "${INFRA_DIR}/messenger-worker-deploy.sh" >/dev/null
  step "load balancer on port ${LB_PORT}"
  "${INFRA_DIR}/messenger-load-balancer-deploy.sh"
  wait_for_traffic "${INSTANCES}"
  step "the stack is up"
  ps_report
  printf '\nTry: curl -s localhost:%s/health   (the README walks through the API)\n' "${LB_PORT}"
}

down() {
  step "load balancer"
  "${INFRA_DIR}/messenger-load-balancer-stop.sh"
  step "serving instances (each deregisters and drains first)"
  "${INFRA_DIR}/messenger-stop.sh" --all
  "${INFRA_DIR}/messenger-stop.sh" --service "${MIGRATOR}" --all
  step "event worker"
  "${INFRA_DIR}/messenger-stop.sh" --service messenger-worker --all
  step "database"
  "${INFRA_DIR}/messenger-db-stop.sh" --volume
  step "platform"
  "${INFRA_DIR}/platform-stop.sh"
  step "stopped"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  ps) ps_report ;;
  scale)
    [[ "${2:-}" =~ ^[0-9]+$ ]] || die "usage: $0 scale N (N >= 0 serving instances)"
    scale_to "$2"
    [ "$2" -eq 0 ] || wait_for_traffic "$2"
    ps_report
    ;;
  reset-db)
    step "migrator job: flush and seed ${DB_NAME}"
    run_migrator_job "flush --no-input" seed
    ;;
  *) die "usage: $0 up|down|ps|scale N|reset-db" ;;
esac
