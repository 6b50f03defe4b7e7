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
# HOSTS=N (local runtime): the same system over N hosts on this machine
# (infrastructure/hosts.sh): a Consul server on every host, PostgreSQL and
# RabbitMQ on the first (the platform host), the instances spread over the
# others, the worker on the last; NGINX and a Consul client agent here, the
# edge. The same deploy scripts, each told its host (DEPLOY_HOST).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

# This configuration requires a new commit to change
INSTANCES="${STACK_INSTANCES:-3}"
DB_NAME="${MESSENGER_DB_NAME:-messenger}"
MIGRATOR=messenger-migrator
HOSTS="${HOSTS:-}"

# Several hosts are namespaces of this machine: the local runtime's.
[ -z "${HOSTS}" ] || MESSENGER_RUNTIME="${MESSENGER_RUNTIME:-local}"
select_runtime
# Where each piece runs: empty is this machine (one host).
PLATFORM_HOST=""
APP_HOSTS=("")
ALL_HOSTS=()
if [ -n "${HOSTS}" ]; then
  [ "${MESSENGER_RUNTIME}" = local ] || die "HOSTS=${HOSTS}: several hosts run in the local runtime only (MESSENGER_RUNTIME=local)"
  [[ "${HOSTS}" =~ ^[1-9]$ ]] || die "HOSTS must be a number of hosts, 1 to 9 (not '${HOSTS}')"
  [ "${1:-}" != up ] || "${INFRA_DIR}/hosts.sh" up "${HOSTS}"
  mapfile -t ALL_HOSTS < <("${INFRA_DIR}/hosts.sh" list | head -n "${HOSTS}")
  if [ "${#ALL_HOSTS[@]}" -gt 0 ]; then
    PLATFORM_HOST="${ALL_HOSTS[0]}"
    if [ "${#ALL_HOSTS[@]}" -gt 1 ]; then APP_HOSTS=("${ALL_HOSTS[@]:1}"); else APP_HOSTS=("${PLATFORM_HOST}"); fi
  else
    # Nothing to stop or show but what may run on this machine.
    case "${1:-}" in down | ps) ;; *) die "no hosts: run 'make up HOSTS=${HOSTS}' first" ;; esac
  fi
fi
WORKER_HOST="${APP_HOSTS[${#APP_HOSTS[@]} - 1]}"
if [ "${MESSENGER_RUNTIME}" = docker ]; then
  export CONSUL_HOST="${CONSUL_HOST:-consul-client}" CONSUL_PORT="${CONSUL_PORT:-8500}"
  export CONSUL_HTTP_ADDR="${CONSUL_HTTP_ADDR:-127.0.0.1:${CONSUL_HOST_PORT}}"
else
  export CONSUL_HOST="${CONSUL_HOST:-127.0.0.1}" CONSUL_PORT="${CONSUL_PORT:-8500}"
fi
export MESSENGER_RUNTIME LB_PORT CONSUL_HOST_PORT RABBITMQ_HOST_PORT RABBITMQ_MANAGEMENT_HOST_PORT \
  MESSENGER_DB_NAME="${DB_NAME}"
require_consul_location

step() { printf '\n==> %s\n' "$*" >&2; }

count_instances() { instances messenger | grep -c . || true; }

# The seed's challenge 4: a short-lived migrator instance runs the jobs, then stops.
run_migrator_job() {  # manage.py commands, each as one quoted string
  DEPLOY_HOST="${APP_HOSTS[0]}" "${INFRA_DIR}/messenger-db-migrator-deploy.sh" >/dev/null
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

wait_for_traffic() {  # every serving instance passing in Consul, and 200 through the load balancer
  local want=$1 passing=0
  for _ in $(seq 1 120); do
    passing="$(curl --silent --max-time 2 "${CONSUL_URL}/v1/health/service/messenger?passing=true" |
      python3 -c 'import json, sys; print(len(json.load(sys.stdin)))' 2>/dev/null || echo 0)"
    if [ "${passing}" -ge "${want}" ] &&
      [ "$(curl --silent --output /dev/null --write-out '%{http_code}' --max-time 2 "http://127.0.0.1:${LB_PORT}/health")" = 200 ]; then
      return 0
    fi
    sleep 0.5
  done
  die "after 60s, ${passing} of ${want} instances pass their check or the load balancer does not answer on ${LB_PORT}"
}

# Live instances per serving host, fewest first: "COUNT HOST" lines (HOST
# empty for this machine).
instances_per_host() {
  local host id
  declare -A count=()
  for host in "${APP_HOSTS[@]}"; do count["_${host}"]=0; done
  while read -r id; do
    [ -n "${id}" ] || continue
    host="$(instance_host "${id}")"
    count["_${host}"]=$((${count["_${host}"]:-0} + 1))
  done < <(live_instances)
  for host in "${APP_HOSTS[@]}"; do printf '%s %s\n' "${count["_${host}"]}" "${host}"; done | sort -n -s -k1,1
}

instance_state() {  # kind id: what its engine or supervisord says (running, exited, fatal, stopped...)
  if [ "${MESSENGER_RUNTIME}" = docker ]; then
    docker inspect --format '{{.State.Status}}' "$2" 2>/dev/null || echo gone
  else
    program_state "$2" | tr '[:upper:]' '[:lower:]'
  fi
}

instance_host() {  # id: its host (empty: this machine or a container)
  if [ "${MESSENGER_RUNTIME}" = docker ]; then echo ""; else supervised_host "$1" || true; fi
}

live_instances() {
  local id
  while read -r id; do
    if [ -n "${id}" ] && instance_live messenger "${id}"; then echo "${id}"; fi
  done < <(instances messenger)
}

# N live serving instances: dead ones (their supervisor gave up on them) are
# removed and replaced; new ones go to the host with the fewest, surplus ones
# leave the host with the most.
scale_to() {
  local want=$1 have host id
  mapfile -t dead < <(comm -23 <(instances messenger | sort) <(live_instances | sort))
  if [ "${#dead[@]}" -gt 0 ]; then
    log "replacing ${#dead[@]} dead instance(s): ${dead[*]}"
    "${INFRA_DIR}/messenger-stop.sh" "${dead[@]}"
  fi
  have="$(live_instances | grep -c . || true)"
  while [ "${have}" -lt "${want}" ]; do
    host="$(instances_per_host | head -n 1 | cut -d' ' -f2-)"
    DEPLOY_HOST="${host}" "${INFRA_DIR}/messenger-deploy.sh" >/dev/null
    have=$((have + 1))
  done
  local extra=()
  if [ "${have}" -gt "${want}" ]; then
    # One at a time from the host that has the most (its highest id first).
    mapfile -t extra < <(live_instances | sort -V | while read -r id; do printf '%s %s\n' "${id}" "$(instance_host "${id}")"; done |
      awk -v n="$((have - want))" '{ count[$2]++; ids[$2, count[$2]] = $1 }
        END { for (i = 0; i < n; i++) { best = ""; max = 0
                for (h in count) if (count[h] > max) { max = count[h]; best = h }
                print ids[best, count[best]]; count[best]-- } }')
  fi
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
    # The platform's programs, on the hosts their supervisord runs them on.
    local kind host
    for kind in platform messenger-db; do
      for id in $(local_instances "${kind}"); do
        host="$(supervised_host "${id}" || true)"
        printf '%-26s %-10s %s\n' "${id}" "$(instance_state "${kind}" "${id}")" \
          "${host:-this machine}, log $(state_path "${kind}" "${id}" log)"
      done
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
  local lb_status
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
    local pid envfile port address host
    pid="$(running_pid "$(state_path "$1" "$2" pid)")"
    envfile="$(state_path "$1" "$2" env)"
    port="$(sed -n 's/^PORT=//p' "${envfile}" 2>/dev/null || true)"
    address="$(sed -n 's/^BIND_HOST=//p' "${envfile}" 2>/dev/null || true)"
    host="$(supervised_host "$2" || true)"
    echo "${host:+${host}, }pid ${pid:-?}${port:+, http://${address:-127.0.0.1}:${port}}, log $(state_path "$1" "$2" log)"
  fi
}

build_images() {
  step "images (make docker-images)"
  "${REPO_ROOT}/scripts/build-docker-images.sh"
}

up() {
  [ "${MESSENGER_RUNTIME}" = docker ] && build_images
  step "platform: Consul and RabbitMQ (amqp-host, amqp-port in Consul KV)"
  DEPLOY_HOST="${PLATFORM_HOST}" CONSUL_SERVER_HOSTS="${ALL_HOSTS[*]}" "${INFRA_DIR}/platform-deploy.sh"
  step "database: roles and connection details in Consul KV"
  DEPLOY_HOST="${PLATFORM_HOST}" "${INFRA_DIR}/messenger-db-deploy.sh"
  step "migrator job: create_db, migrate, seed (as messenger-migrator), then stop it"
  run_migrator_job create_db migrate seed
  step "serving instances: ${INSTANCES} of messenger"
  scale_to "${INSTANCES}"
  step "event worker"
  DEPLOY_HOST="${WORKER_HOST}" "${INFRA_DIR}/messenger-worker-deploy.sh" >/dev/null
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
  if [ -n "${HOSTS}" ]; then
    "${INFRA_DIR}/messenger-stop.sh" --service messenger-db --all
  else
    "${INFRA_DIR}/messenger-db-stop.sh" --volume
  fi
  step "platform"
  "${INFRA_DIR}/platform-stop.sh"
  if [ -n "${HOSTS}" ]; then
    step "hosts"
    "${INFRA_DIR}/hosts.sh" down
  fi
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
