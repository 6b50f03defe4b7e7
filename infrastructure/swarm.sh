#!/usr/bin/env bash
# The system over several hosts (HOSTS=N): docker/compose.yaml, with the swarm's
# override docker/compose.swarm.yaml, deployed as the stack `messenger` on the
# hosts' swarm (infrastructure/hosts.sh). The engine places, restarts and rolls
# out; this script only says what should run. `make up|down|ps|scale|reset-db|deploy
# HOSTS=3` call it through stack.sh.
#
#   ./infrastructure/swarm.sh up          # hosts, engines, swarm; platform, database, migrator job, instances, worker, load balancer
#   ./infrastructure/swarm.sh down        # remove the stack (instances drain), then every host with its engine and data
#   ./infrastructure/swarm.sh ps          # nodes, services, tasks, instances in Consul, the load balancer
#   ./infrastructure/swarm.sh scale N     # N serving instances (docker service scale)
#   ./infrastructure/swarm.sh reset-db    # empty the database and seed it again (the migrator job)
#   ./infrastructure/swarm.sh deploy [IMAGE]   # roll a new messenger image out (default: build the working tree)
#
# The seed's lesson holds on the swarm: the platform's jobs write the connection
# details to Consul KV; this script reads them at deploy time (a missing key stops
# it) and hands them to the stack as its variables.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

# This configuration requires a new commit to change
STACK=messenger
INSTANCES="${STACK_INSTANCES:-3}"
HOSTS="${HOSTS:-3}"
HOSTS_SH="${INFRA_DIR}/hosts.sh"
# How long a deploy may take to converge before this script gives up waiting: a
# rollout of three tasks on a busy host of two cores was seen to take over 300 s.
CONVERGE_SECONDS=420
# The edge's Consul client agent (a task of the stack on this machine).
export CONSUL_HOST=127.0.0.1 CONSUL_PORT="${CONSUL_HTTP_PORT}"
export MESSENGER_RUNTIME=docker  # what lib.sh reads (require_consul_location)
# docker/.env's facts, for the stack's ${...} (lib.sh read them; `docker stack
# deploy` reads no .env file).
export "${DOCKER_ENV_NAMES[@]}"

[[ "${HOSTS}" =~ ^[1-9]$ ]] || die "HOSTS must be a number of hosts, 1 to 9 (not '${HOSTS}')"
require_consul_location

step() { printf '\n==> %s\n' "$*" >&2; }
service() { printf '%s_%s' "${STACK}" "$1"; }

# A host whose engine answers as a manager of the swarm (any host's engine may be
# lost); fails, saying nothing, when none does (an earlier run's hosts whose
# processes were all ended leave their namespaces and no engine).
manager_host() {
  local host
  for host in $("${HOSTS_SH}" list); do
    if timeout 10 "${HOSTS_SH}" docker "${host}" node ls >/dev/null 2>&1; then
      echo "${host}"
      return 0
    fi
  done
  return 1
}

# The docker client on a manager that answers.
manager() {
  local host
  host="$(manager_host)" || die "no manager of the swarm answers: run 'make up HOSTS=${HOSTS}'"
  "${HOSTS_SH}" docker "${host}" "$@"
}

# The image a deploy hands the stack: the image under a tag naming its id, so a
# new build is a new image for the swarm (which resolves no tags here), loaded
# into every host's engine that lacks it. Prints the tag.
tag_messenger_image() {  # image
  local id ref
  id="$(docker image inspect --format '{{.Id}}' "$1")" || die "no image $1: run 'make docker-images'"
  id="${id#sha256:}"
  ref="${MESSENGER_IMAGE}:${id:0:12}"
  docker tag "$1" "${ref}"
  MESSENGER_IMAGE_REF="${ref}" "${HOSTS_SH}" images
  echo "${ref}"
}

replicas_of() {  # service: how many tasks it runs now (0 when it does not exist yet)
  local have
  have="$(manager service inspect --format \
    '{{with .Spec.Mode.Replicated}}{{.Replicas}}{{end}}{{with .Spec.Mode.ReplicatedJob}}{{.TotalCompletions}}{{end}}' \
    "$(service "$1")" 2>/dev/null || true)"
  if [[ "${have}" =~ ^[0-9]+$ ]]; then echo "${have}"; else echo 0; fi
}

# The variables of docker/compose.swarm.yaml: the hosts, and every service's
# replicas as they are now (a deploy changes no count it does not mean to).
export_topology() {
  local host joins=() addresses=() nodes=()
  for host in $("${HOSTS_SH}" list); do
    joins+=("-retry-join=$("${HOSTS_SH}" address "${host}")")
    addresses+=("$("${HOSTS_SH}" address "${host}")")
    nodes+=("rabbit@${host}")
  done
  HOSTS_SUBNET="$("${HOSTS_SH}" subnet)"
  export HOSTS_SUBNET CONSUL_SERVERS="${#joins[@]}" CONSUL_RETRY_JOIN="${joins[*]}"
  HOST_ADDRESSES="$(IFS=,; echo "${addresses[*]}")"
  export HOST_ADDRESSES RABBITMQ_NODES="${nodes[*]}" PATRONI_IMAGE
  # What runs now stays what runs, unless the caller says otherwise.
  MESSENGER_IMAGE_REF="${MESSENGER_IMAGE_REF:-$(running_image messenger)}"
  MIGRATOR_IMAGE_REF="${MIGRATOR_IMAGE_REF:-$(running_image messenger-migrator)}"
  MESSENGER_IMAGE_REF="${MESSENGER_IMAGE_REF:-$(tag_messenger_image "${MESSENGER_IMAGE}:latest")}"
  MIGRATOR_IMAGE_REF="${MIGRATOR_IMAGE_REF:-${MESSENGER_IMAGE_REF}}"
  export MESSENGER_IMAGE_REF MIGRATOR_IMAGE_REF
  MESSENGER_REPLICAS="$(replicas_of messenger)" MIGRATOR_REPLICAS="$(replicas_of messenger-migrator)"
  WORKER_REPLICAS="$(replicas_of messenger-worker)" LB_REPLICAS="$(replicas_of messenger-lb)"
  export MESSENGER_REPLICAS MIGRATOR_REPLICAS WORKER_REPLICAS LB_REPLICAS
}

deploy_stack() {
  "${MESSENGER_VENV}/bin/python" "${REPO_ROOT}/docker/stack.py" |
    manager stack deploy --resolve-image never --compose-file - "${STACK}" 2>&1 >/dev/null |
    { grep -v -e 'detach=false' || true; } >&2
}

# The jobs of the platform's stack that write Consul KV (and the roles): each
# retries until what it needs answers; the keys are read only once all are done.
PLATFORM_JOBS=(messenger-db-roles messenger-db-kv rabbitmq-setup platform-kv)

wait_for_platform_jobs() {
  local name deadline=$((SECONDS + CONVERGE_SECONDS))
  for name in "${PLATFORM_JOBS[@]}"; do wait_for_job "${name}" "" retried; done
  # The jobs wrote through the platform node's agent; this script reads through
  # the edge's, which answers 500 until it has joined the servers.
  until [ "$(curl --silent --output /dev/null --write-out '%{http_code}' --max-time 2 "${CONSUL_URL}/v1/kv/${KV_AMQP_HOST}")" = 200 ]; do
    [ "${SECONDS}" -lt "${deadline}" ] || die "the edge's Consul agent at ${CONSUL_URL} does not read KV (docker service logs $(service consul-client))"
    sleep 0.5
  done
}

# The connection details, read from KV as the seed's deploy scripts read them.
export_connection_details() {
  read_connection_details "${KV_DB_MIGRATOR_USER}" "${KV_DB_MIGRATOR_PASSWORD}"
  DB_MIGRATOR_USER="${PGUSER}" DB_MIGRATOR_PASSWORD="${PGPASSWORD}"
  read_connection_details "${KV_DB_APPLICATION_USER}" "${KV_DB_APPLICATION_PASSWORD}"
  DB_APPLICATION_USER="${PGUSER}" DB_APPLICATION_PASSWORD="${PGPASSWORD}"
  export DB_HOST="${PGHOST}" DB_PORT="${PGPORT}" AMQP_HOST="${AMQPHOST}" AMQP_PORT="${AMQPPORT}" \
    DB_MIGRATOR_USER DB_MIGRATOR_PASSWORD DB_APPLICATION_USER DB_APPLICATION_PASSWORD
  unset PGUSER PGPASSWORD PGHOST PGPORT AMQPHOST AMQPPORT
}

job_tasks() { manager service ps --quiet --no-trunc "$(service "$1")" 2>/dev/null | sort; }

# wait_for_job NAME BEFORE [retried]: until a task of the job that is not in
# BEFORE (its task ids before the run) completes. A failed task stops the wait
# with its logs, unless the job is one the swarm retries (`retried`).
wait_for_job() {
  local name=$1 before=$2 retried=${3:-} task state deadline=$((SECONDS + CONVERGE_SECONDS))
  while [ "${SECONDS}" -lt "${deadline}" ]; do
    for task in $(comm -13 <(printf '%s\n' "${before}") <(job_tasks "${name}")); do
      state="$(manager inspect --format '{{.Status.State}}' "${task}" 2>/dev/null || true)"
      case "${state}" in
        complete) log "job ${name}: complete"; return 0 ;;
        failed | rejected)
          [ -z "${retried}" ] || continue
          manager service logs --tail 40 "$(service "${name}")" >&2 || true
          die "job ${name} ${state} (docker service logs $(service "${name}"))"
          ;;
      esac
    done
    sleep 1
  done
  manager service ps --no-trunc "$(service "${name}")" >&2 || true
  die "job ${name} did not complete within ${CONVERGE_SECONDS}s (docker service logs $(service "${name}"))"
}

job_iteration() { manager service inspect --format '{{if .JobStatus}}{{.JobStatus.JobIteration.Index}}{{end}}' "$(service "$1")" 2>/dev/null || true; }

# The migrator job as the stack declares it (MIGRATOR_REPLICAS=1): the swarm runs
# it again when its spec changed (a new image); otherwise its last run stands,
# unless that one did not complete.
migrate() {
  local before iteration last
  before="$(job_tasks messenger-migrator)"
  iteration="$(job_iteration messenger-migrator)"
  export MIGRATOR_REPLICAS=1
  deploy_stack
  if [ "$(job_iteration messenger-migrator)" != "${iteration}" ] || [ -z "${before}" ]; then
    wait_for_job messenger-migrator "${before}"
    return
  fi
  last="$(manager service ps --format '{{.CurrentState}}' "$(service messenger-migrator)" | sed -n 1p)"
  case "${last}" in
    Complete*) log "job messenger-migrator: ran for this image already (${last})" ;;
    *) run_migrator ;;
  esac
}

# The migrator job once more, with its declared command or with the ARGS given.
run_migrator() {  # [args]
  local before
  before="$(job_tasks messenger-migrator)"
  if [ "$#" -gt 0 ]; then
    manager service update --detach --force --args "$1" "$(service messenger-migrator)" >/dev/null
  else
    manager service update --detach --force "$(service messenger-migrator)" >/dev/null
  fi
  wait_for_job messenger-migrator "${before}"
}

# Why a rollout was rolled back: the task the swarm named, as its node saw it
# (its health check's last results, or how it ended), then its last log lines.
report_failed_task() {  # task id
  local task=$1 node host container on_node=(docker)
  log "the swarm rolled back over task ${task}"
  read -r node container < <(manager inspect --format '{{.NodeID}} {{.Status.ContainerStatus.ContainerID}}' "${task}" 2>/dev/null) || return 0
  host="$(manager node inspect --format '{{.Description.Hostname}}' "${node}" 2>/dev/null)" || return 0
  if "${HOSTS_SH}" list | grep -x -- "${host}" >/dev/null; then on_node=("${HOSTS_SH}" docker "${host}"); fi
  log "task ${task} on ${host}: $("${on_node[@]}" inspect --format \
    '{{if .State.Health}}health {{.State.Health.Status}}; its last checks:{{range .State.Health.Log}} exit {{.ExitCode}} {{printf "%q" .Output}};{{end}}{{end}} exited {{.State.ExitCode}}' \
    "${container}" 2>/dev/null || echo 'its container is gone')"
  manager service logs --raw --tail 30 "${task}" >&2 || true
}

# The newest task of SERVICE that ran IMAGE (`docker service ps` lists each slot's tasks newest first);
# nothing when none is found.
last_task_of_image() {  # service image
  { manager service ps --no-trunc --format '{{.ID}} {{.Image}}' "$(service "$1")" 2>/dev/null || true; } |
    awk -v image="$2" '$2 == image || index($2, image "@") == 1 { print $1; exit }'
}

update_started() { manager service inspect --format '{{if .UpdateStatus}}{{.UpdateStatus.StartedAt}}{{end}}' "$(service "$1")"; }
running_image() { manager service inspect --format '{{.Spec.TaskTemplate.ContainerSpec.Image}}' "$(service "$1")" 2>/dev/null || true; }

# wait_for_update SERVICE STARTED-BEFORE: until the update the last deploy began
# (its start time differs from the one before) has ended; prints its last state
# (completed, rollback_completed, paused...), then for a rollback the task the
# swarm rolled back over (its message names it only while the rollback runs).
wait_for_update() {
  local status state failed="" deadline=$((SECONDS + CONVERGE_SECONDS))
  while [ "${SECONDS}" -lt "${deadline}" ]; do
    if [ "$(update_started "$1")" != "$2" ]; then
      status="$(manager service inspect --format '{{if .UpdateStatus}}{{.UpdateStatus.State}} {{.UpdateStatus.Message}}{{end}}' "$(service "$1")")"
      state="${status%% *}"
      if [[ "${status}" =~ \ task\ ([a-z0-9]+)$ ]]; then failed="${BASH_REMATCH[1]}"; fi
      case "${state}" in
        "" | updating | rollback_started) ;;
        *) echo "${state} ${failed}"; return 0 ;;
      esac
    fi
    sleep 1
  done
  die "$(service "$1") still updating after ${CONVERGE_SECONDS}s"
}

up() {
  step "this machine's engine and the images (make docker-images)"
  "${REPO_ROOT}/scripts/ensure-docker.sh" start
  "${REPO_ROOT}/scripts/build-docker-images.sh"
  step "hosts: ${HOSTS} namespaces, an engine each, one swarm"
  "${HOSTS_SH}" up "${HOSTS}"
  export_topology
  step "platform: Consul on every host, RabbitMQ and PostgreSQL, the jobs that write Consul KV"
  deploy_stack
  wait_for_platform_jobs
  export_connection_details
  step "migrator job: create_db, migrate, seed (as ${DB_MIGRATOR_USER})"
  migrate
  step "serving instances, event worker, load balancer on port ${LB_PORT}"
  [ "${MESSENGER_REPLICAS}" -gt 0 ] || MESSENGER_REPLICAS="${INSTANCES}"
  export MIGRATOR_REPLICAS=1 WORKER_REPLICAS=1 LB_REPLICAS=1
  deploy_stack
  wait_for_traffic "${MESSENGER_REPLICAS}"
  step "the stack is up"
  ps_report
  printf '\nTry: curl -s localhost:%s/health   (the README walks through the API)\n' "${LB_PORT}"
}

# make deploy: a new image for the migrator job, then for the serving instances
# and the worker, one task at a time, each started before its predecessor stops
# and kept only once healthy; a task that fails its health check rolls the
# whole service back (compose.swarm.yaml's update_config).
deploy() {
  local image=${1:-} target previous result started worker_started failed_task
  if [ -z "${image}" ]; then
    step "building the messenger image from this tree"
    replace_image "${MESSENGER_IMAGE}:latest" -f "${REPO_ROOT}/docker/Dockerfile" "${REPO_ROOT}"
    image="${MESSENGER_IMAGE}:latest"
  fi
  target="$(tag_messenger_image "${image}")"
  export_topology
  export_connection_details
  [ "${MESSENGER_REPLICAS}" -gt 0 ] || die "no serving instances to roll out to: run 'make up HOSTS=${HOSTS}' first"
  previous="${MESSENGER_IMAGE_REF}"
  if [ "${previous}" = "${target}" ]; then
    log "$(service messenger) runs ${target} already: nothing to roll out"
    return 0
  fi
  step "rolling out ${target} (${image}): the migrator job first"
  MIGRATOR_IMAGE_REF="${target}" migrate
  step "serving instances and worker: one task at a time, started first, kept once healthy"
  started="$(update_started messenger)"
  worker_started="$(update_started messenger-worker)"
  # One deploy per rollout: a deploy during an update replaces the update (and its rollback watch).
  MIGRATOR_IMAGE_REF="${target}" MESSENGER_IMAGE_REF="${target}" deploy_stack
  result="$(wait_for_update messenger "${started}")"
  case "${result%% *}" in
    completed) log "$(service messenger): now ${target}" ;;
    rollback_completed)
      # The swarm put the instances back; the stack declares the previous image
      # again, so the worker and the migrator job run it too.
      wait_for_update messenger-worker "${worker_started}" >/dev/null
      MIGRATOR_IMAGE_REF="${previous}" MESSENGER_IMAGE_REF="${previous}" deploy_stack
      # The update's message names the task only while the rollback runs; a rollback that
      # ended between two looks is reported by the newest task that ran the image.
      failed_task="${result#* }"
      [ -n "${failed_task}" ] || failed_task="$(last_task_of_image messenger "${target}")"
      [ -z "${failed_task}" ] || report_failed_task "${failed_task}"
      die "${target} (${image}) failed its health check: $(service messenger) rolled back to ${previous}"
      ;;
    *) die "$(service messenger): update ${result} (docker service ps $(service messenger))" ;;
  esac
  wait_for_update messenger-worker "${worker_started}" >/dev/null
  wait_for_traffic "${MESSENGER_REPLICAS}"
}

passing_instances() {
  curl --silent --max-time 2 "${CONSUL_URL}/v1/health/service/messenger?passing=true" |
    python3 -c 'import json, sys; print(len(json.load(sys.stdin)))' 2>/dev/null || echo 0
}

# The engine starts or stops tasks until N run (a task stopped deregisters and
# drains first); then exactly N pass in Consul and answer through the load balancer.
scale() {
  local want=$1 deadline=$((SECONDS + CONVERGE_SECONDS))
  log "$(service messenger): scaling to ${want} (the engine converges, each stopped task drains first)"
  manager service scale "$(service messenger)=${want}" >/dev/null
  until [ "$(passing_instances)" -eq "${want}" ]; do
    [ "${SECONDS}" -lt "${deadline}" ] || die "$(passing_instances) instances pass in Consul, not ${want}"
    sleep 0.5
  done
  [ "${want}" -eq 0 ] || wait_for_traffic "${want}"
}

reset_db() {
  step "migrator job: flush and seed"
  export_topology
  export_connection_details
  run_migrator "sh -c 'python manage.py flush --no-input && python manage.py seed'"
  step "migrator job: its declared command again (create_db, migrate, seed: nothing to do)"
  migrate
}

ps_report() {
  printf '%-30s %-10s %s\n' PIECE STATE WHERE
  local line
  while read -r line; do
    # shellcheck disable=SC2086  # three words: host, status, manager status
    set -- ${line}
    printf '%-30s %-10s %s\n' "node $1" "$(tr '[:upper:]' '[:lower:]' <<<"$2")" "${3:-worker}"
  done < <(manager node ls --format '{{.Hostname}} {{.Status}} {{.ManagerStatus}}' | sort)
  while read -r line; do
    # shellcheck disable=SC2086  # name, node, state words
    set -- ${line}
    printf '%-30s %-10s %s\n' "${1%%.*}" "$(tr '[:upper:]' '[:lower:]' <<<"$3")" "task on $2"
  done < <(manager stack ps "${STACK}" --filter desired-state=running --format '{{.Name}} {{.Node}} {{.CurrentState}}' | sort -V)
  # The database's members as Patroni sees them (any member answers for all).
  local host cluster='{}'
  for host in $("${HOSTS_SH}" list); do
    cluster="$(curl --silent --fail --max-time 2 "http://$("${HOSTS_SH}" address "${host}"):8008/cluster")" && break
    cluster='{}'
  done
  printf '%s' "${cluster}" | python3 -c '
import json, sys
for member in json.load(sys.stdin).get("members", []):
    print("%-30s %-10s %s" % ("database " + member["name"], member["role"],
          "%s:%s, %s, timeline %s" % (member["host"], member["port"], member["state"], member.get("timeline", "-"))))' || true
  local health
  health="$(curl --silent --max-time 2 "${CONSUL_URL}/v1/health/service/messenger" 2>/dev/null || echo '[]')"
  printf '%s' "${health}" | python3 -c '
import json, sys
order = {"passing": 0, "warning": 1, "critical": 2}
for entry in json.load(sys.stdin):
    service = entry["Service"]
    status = max((check["Status"] for check in entry["Checks"]), key=order.get, default="passing")
    print("%-30s %-10s %s" % ("instance", status,
          "http://%s:%s on %s, %s" % (service["Address"], service["Port"], entry["Node"]["Node"], service["ID"])))' || true
  local lb_status
  lb_status="$(curl --silent --output /dev/null --write-out '%{http_code}' --max-time 2 "http://127.0.0.1:${LB_PORT}/health" || true)"
  if [ "${lb_status}" = 200 ]; then
    printf '%-30s %-10s %s\n' load-balancer up "http://localhost:${LB_PORT}/"
  else
    printf '%-30s %-10s %s\n' load-balancer down "http://localhost:${LB_PORT}/ (HTTP ${lb_status:-none})"
  fi
}

down() {
  if manager_host >/dev/null; then
    step "the stack (each instance deregisters and drains first)"
    manager stack rm "${STACK}" >/dev/null
    local deadline=$((SECONDS + CONVERGE_SECONDS))
    while [ -n "$(docker ps --all --quiet --filter "label=com.docker.stack.namespace=${STACK}")" ] ||
      [ -n "$(manager service ls --quiet --filter "label=com.docker.stack.namespace=${STACK}")" ]; do
      [ "${SECONDS}" -lt "${deadline}" ] || break
      sleep 1
    done
  fi
  step "this machine's part of the stack"
  local leftovers
  leftovers="$(docker ps --all --quiet --filter "label=com.docker.stack.namespace=${STACK}" 2>/dev/null || true)"
  # shellcheck disable=SC2086  # container ids
  [ -z "${leftovers}" ] || docker rm --force --volumes ${leftovers} >/dev/null
  leftovers="$(docker volume ls --quiet --filter "label=com.docker.stack.namespace=${STACK}" 2>/dev/null || true)"
  # shellcheck disable=SC2086  # volume names
  [ -z "${leftovers}" ] || docker volume rm ${leftovers} >/dev/null
  step "hosts"
  "${HOSTS_SH}" down
  step "stopped"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  ps) ps_report ;;
  scale)
    [[ "${2:-}" =~ ^[0-9]+$ ]] || die "usage: $0 scale N (N >= 0 serving instances)"
    scale "$2"
    ps_report
    ;;
  reset-db) reset_db ;;
  deploy) deploy "${2:-}" ;;
  *) die "usage: $0 up|down|ps|scale N|reset-db|deploy [IMAGE]" ;;
esac
