# shellcheck shell=bash
# Variables set here are read by the scripts that source this file, or passed
# to an instance by name (start_instance), so shellcheck cannot see them used.
# shellcheck disable=SC2034
# Shell functions shared by the scripts in this folder. Sourced, never run:
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# What lives here is what every deploy script needs the same way: talking to
# Consul (its location comes from the caller), choosing the runtime, and running
# a service instance either as a Docker container or as a local process with
# its pid, log and environment under the state folder. Each script keeps its
# own settings at its top.

INFRA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${INFRA_DIR}/.." && pwd)"
SCRIPT_NAME="$(basename "$0")"

# The image `docker build -t messenger -f docker/Dockerfile .` makes, and the
# network the platform's containers share (the seed's names).
MESSENGER_IMAGE=messenger
# The several-hosts topology's database member: PostgreSQL kept by Patroni (docker/patroni).
PATRONI_IMAGE=messenger-patroni
MESSENGER_DOCKER_NETWORK=mm_2023
# The platform's facts (image versions, ports, roles and passwords, Consul KV
# key names), declared once in docker/.env (compose reads the same file); a
# variable the caller set wins. DOCKER_ENV_NAMES lists them, for a script that
# hands them all on (swarm.sh, to the stack's ${...}).
DOCKER_ENV_NAMES=()
while IFS= read -r docker_env_line; do
  case "${docker_env_line}" in '' | '#'*) continue ;; esac
  docker_env_name="${docker_env_line%%=*}"
  DOCKER_ENV_NAMES+=("${docker_env_name}")
  [ -n "${!docker_env_name:-}" ] || printf -v "${docker_env_name}" '%s' "${docker_env_line#*=}"
done <"${REPO_ROOT}/docker/.env"
unset docker_env_line docker_env_name

# Where the local runtime keeps pid, log and environment files.
MESSENGER_STATE_DIR="${MESSENGER_STATE_DIR:-${REPO_ROOT}/.state}"
# The project's virtualenv (`make venv`), whose gunicorn runs local instances.
MESSENGER_VENV="${MESSENGER_VENV:-${REPO_ROOT}/.venv}"

# Progress goes to stderr, so a script's stdout carries only its result
# (messenger-deploy.sh prints the new instance's id).
log() { printf '[%s] %s\n' "${SCRIPT_NAME}" "$*" >&2; }
die() {
  printf '%s: %s\n' "${SCRIPT_NAME}" "$*" >&2
  exit 1
}

# --- runtime -------------------------------------------------------------------

docker_engine_answers() {
  command -v docker >/dev/null 2>&1 && timeout 15 docker info >/dev/null 2>&1
}

# MESSENGER_RUNTIME=docker|local chooses; unset, Docker when an engine answers.
select_runtime() {
  if [ -z "${MESSENGER_RUNTIME:-}" ]; then
    if docker_engine_answers; then MESSENGER_RUNTIME=docker; else MESSENGER_RUNTIME=local; fi
  fi
  case "${MESSENGER_RUNTIME}" in
    docker) docker_engine_answers || die "MESSENGER_RUNTIME=docker but no Docker engine answers 'docker info'" ;;
    local) ;;
    *) die "MESSENGER_RUNTIME must be docker or local, not '${MESSENGER_RUNTIME}'" ;;
  esac
}

# docker_run_once NAME DOCKER-RUN-ARGS...: start container NAME on the
# platform's network unless it runs. `--restart unless-stopped`: a container
# that dies is started again by the engine, with no person acting; one left
# stopped (a stop that did not remove it) is removed first.
docker_run_once() {
  local name=$1
  shift
  if [ -n "$(docker ps --quiet --filter "name=^${name}\$")" ]; then
    log "${name} is already running"
    return 0
  fi
  docker rm --volumes "${name}" >/dev/null 2>&1 || true
  docker run -d --restart unless-stopped --name "${name}" --network "${MESSENGER_DOCKER_NETWORK}" "$@" >/dev/null
  log "${name}: container started (docker logs ${name})"
}

# replace_image TAG DOCKER-BUILD-ARGS...: build TAG (classic builder, the
# host's network: the project's engine gives containers no route out, and a
# build's RUN steps reach the package registries only through the host's),
# then remove the image TAG named before, so rebuilds do not pile up on disk.
replace_image() {
  local tag=$1 before after
  shift
  before="$(docker image inspect --format '{{.Id}}' "${tag}" 2>/dev/null || true)"
  DOCKER_BUILDKIT=0 docker build --network host -t "${tag}" "$@"
  after="$(docker image inspect --format '{{.Id}}' "${tag}")"
  if [ -n "${before}" ] && [ "${before}" != "${after}" ]; then
    docker rmi "${before}" >/dev/null 2>&1 || true  # still used by a container: kept
  fi
}

# docker_remove NAME [SECONDS]: stop container NAME gracefully (its image's
# stop signal, SIGKILL after SECONDS) and remove it with its anonymous volumes.
docker_remove() {
  local name=$1 seconds=${2:-${STOP_TIMEOUT_SECONDS}}
  if [ -z "$(docker ps --all --quiet --filter "name=^${name}\$")" ]; then
    log "${name} is not running"
    return 0
  fi
  docker stop --time "${seconds}" "${name}" >/dev/null
  docker rm --volumes "${name}" >/dev/null
  log "${name}: stopped and removed"
}

# --- Consul --------------------------------------------------------------------

# CONSUL_HOST and CONSUL_PORT come from the caller: they are what instances use.
# This script reaches the same agent at CONSUL_HTTP_ADDR (Consul's own variable),
# which defaults to them; with Docker, `consul-client` is a name inside the
# container network, so set CONSUL_HTTP_ADDR to the agent's published port.
require_consul_location() {
  [ -n "${CONSUL_HOST:-}" ] || die "CONSUL_HOST is not set (the Consul agent's host, provided by the platform: e.g. CONSUL_HOST=127.0.0.1 CONSUL_PORT=${CONSUL_HTTP_PORT} $0)"
  [ -n "${CONSUL_PORT:-}" ] || die "CONSUL_PORT is not set (the Consul agent's HTTP port, provided by the platform: e.g. CONSUL_HOST=127.0.0.1 CONSUL_PORT=${CONSUL_HTTP_PORT} $0)"
  # The seed's commands say CONSUL_HOST=consul-client, a name on its Docker
  # network. In the local runtime the platform's agent runs on this machine, so
  # a name that does not resolve here means this machine: scripts and the
  # instances they start use 127.0.0.1 instead.
  if [ "${MESSENGER_RUNTIME:-}" = local ] && [ -z "${CONSUL_HTTP_ADDR:-}" ] &&
    ! getent hosts "${CONSUL_HOST}" >/dev/null 2>&1; then
    log "CONSUL_HOST=${CONSUL_HOST} does not resolve here; the local runtime's Consul agent is on this machine: using 127.0.0.1"
    CONSUL_HOST=127.0.0.1
    export CONSUL_HOST
  fi
  local addr="${CONSUL_HTTP_ADDR:-${CONSUL_HOST}:${CONSUL_PORT}}"
  case "${addr}" in
    http://* | https://*) CONSUL_URL="${addr%/}" ;;
    *) CONSUL_URL="http://${addr%/}" ;;
  esac
}

# Which script writes each key, for the message when one is missing.
kv_owner() {
  case "$1" in
    messenger-db-*) echo "infrastructure/messenger-db-deploy.sh" ;;
    amqp-*) echo "infrastructure/platform-deploy.sh" ;;
    *) echo "its owner" ;;
  esac
}

consul_unreachable() {
  local hint=""
  if [ -z "${CONSUL_HTTP_ADDR:-}" ] && ! getent hosts "${CONSUL_HOST}" >/dev/null 2>&1; then
    hint=" ('${CONSUL_HOST}' does not resolve here: set CONSUL_HTTP_ADDR to where this host reaches the agent, e.g. 127.0.0.1:${CONSUL_HOST_PORT})"
  fi
  die "cannot reach Consul at ${CONSUL_URL}${hint}"
}

# kv_get KEY: print the value; stop the script, naming the key, when it is
# missing or empty (the seed's bare curl injected an empty value instead).
kv_get() {
  local key=$1 body status
  body="$(mktemp)"
  status="$(curl --silent --max-time 10 --output "${body}" --write-out '%{http_code}' \
    "${CONSUL_URL}/v1/kv/${key}?raw=true")" || { rm -f "${body}"; consul_unreachable; }
  case "${status}" in
    200) ;;
    404) rm -f "${body}"; die "Consul KV key '${key}' is missing at ${CONSUL_URL}: run $(kv_owner "${key}") first" ;;
    *) rm -f "${body}"; die "reading Consul KV key '${key}' at ${CONSUL_URL} failed with HTTP ${status}" ;;
  esac
  if [ ! -s "${body}" ]; then
    rm -f "${body}"
    die "Consul KV key '${key}' at ${CONSUL_URL} is empty: run $(kv_owner "${key}") again"
  fi
  cat "${body}"
  rm -f "${body}"
}

# read_connection_details USER-KEY PASSWORD-KEY: the database's and RabbitMQ's
# connection details from Consul KV, as the seed's deploy scripts read them:
# PGUSER and PGPASSWORD from the two keys named (the application's or the
# migrator's role), PGHOST, PGPORT, AMQPHOST and AMQPPORT from the platform's.
read_connection_details() {
  PGUSER="$(kv_get "$1")"
  PGPORT="$(kv_get "${KV_DB_PORT}")"
  PGHOST="$(kv_get "${KV_DB_HOST}")"
  # NOTE: Never do this in a real-world deployment. Store passwords
  # only in an encrypted secrets store.
  PGPASSWORD="$(kv_get "$2")"
  AMQPHOST="$(kv_get "${KV_AMQP_HOST}")"
  AMQPPORT="$(kv_get "${KV_AMQP_PORT}")"
}

kv_put() {
  local key=$1 value=$2
  curl --silent --show-error --fail --max-time 10 --output /dev/null -X PUT \
    --data-binary "${value}" "${CONSUL_URL}/v1/kv/${key}" || consul_unreachable
  log "Consul KV: ${key} written"
}

# Every serving instance passing in Consul, and 200 through the load balancer.
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

# --- local processes -------------------------------------------------------------

free_port() {  # a port free on this machine's loopback
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_answers() {  # host port
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# A pid names a live process (not a zombie whose parent has not reaped it).
# Read from /proc with builtins only: supervise asks this on every poll.
process_alive() {
  local stat
  [[ "$1" =~ ^[0-9]+$ ]] && { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
  stat="${stat##*) }"
  [ "${stat%% *}" != Z ]
}

state_path() {  # kind id suffix
  printf '%s/%s/%s.%s' "${MESSENGER_STATE_DIR}" "$1" "$2" "$3"
}

# The pid in a pid file, if that process still runs; prints nothing otherwise.
running_pid() {  # pidfile
  local pid
  [ -f "$1" ] || return 0
  pid="$(cat "$1")"
  if [ -n "${pid}" ] && process_alive "${pid}"; then echo "${pid}"; fi
}

# Local instances of KIND that have a pid file, also one whose process died
# without cleaning up (killed), so that stopping it removes its files.
local_instances() {  # kind
  local pidfile
  for pidfile in "${MESSENGER_STATE_DIR}/$1"/*.pid; do
    [ -e "${pidfile}" ] && basename "${pidfile}" .pid
  done
  return 0
}

# --- supervision (local runtime) -----------------------------------------------------
#
# One supervisord of this machine, started on first use, runs every local
# process of the system: Consul, each service instance, the worker and the load
# balancer's watcher are its programs. It starts each in a process group of its
# own, starts again one that dies (a SIGKILL included), and stops one with its
# stop signal, SIGKILLing the group only after STOP_TIMEOUT_SECONDS. A program's
# definition is one file in the supervisor folder's programs/, added and
# removed with `supervisorctl update`.

SUPERVISOR_DIR="${MESSENGER_STATE_DIR}/supervisor"

supervisor_ctl() {  # ARG...: supervisorctl of this machine's supervisord
  supervisorctl -c "${SUPERVISOR_DIR}/supervisord.conf" "$@"
}

# A unix socket's path is limited to 107 bytes, which a state folder deep in a
# temporary folder may exceed: the socket sits in the temporary folder, named
# after its supervisor folder.
supervisor_socket() {
  printf '%s/messenger-supervisor-%s.sock' "${TMPDIR:-/tmp}" "$(printf '%s' "${SUPERVISOR_DIR}" | md5sum | cut -c1-16)"
}

supervisor_running() {
  [ -f "${SUPERVISOR_DIR}/supervisord.conf" ] && supervisor_ctl pid >/dev/null 2>&1
}

ensure_supervisor() {
  local socket
  supervisor_running && return 0
  command -v supervisord >/dev/null 2>&1 || die "supervisord not found: run 'make system-deps'"
  mkdir -p "${SUPERVISOR_DIR}/programs"
  socket="$(supervisor_socket)"
  printf '%s\n' \
    "; Written by infrastructure/lib.sh: the supervisord of this machine's stack." \
    "[unix_http_server]" "file=${socket}" "chmod=0700" "" \
    "[supervisord]" "pidfile=${SUPERVISOR_DIR}/supervisord.pid" "logfile=${SUPERVISOR_DIR}/supervisord.log" \
    "childlogdir=${SUPERVISOR_DIR}" "identifier=messenger" "" \
    "[rpcinterface:supervisor]" "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface" "" \
    "[supervisorctl]" "serverurl=unix://${socket}" "" \
    "[include]" "files=${SUPERVISOR_DIR}/programs/*.conf" >"${SUPERVISOR_DIR}/supervisord.conf"
  supervisord -c "${SUPERVISOR_DIR}/supervisord.conf"
  for _ in $(seq 1 100); do
    supervisor_running && { log "supervisord of this machine: running (${SUPERVISOR_DIR})"; return 0; }
    sleep 0.1
  done
  die "supervisord of this machine did not answer within 10s (log: ${SUPERVISOR_DIR}/supervisord.log)"
}

supervised() {  # id: supervisord has program ID (running or not)
  [ -e "${SUPERVISOR_DIR}/programs/$1.conf" ]
}

# The program's state as supervisord reports it (RUNNING, STARTING, BACKOFF,
# EXITED, FATAL, STOPPED...), or GONE when supervisord does not have it.
program_state() {  # id
  local state=""
  if supervised "$1"; then
    state="$(supervisor_ctl status "$1" 2>/dev/null | awk '{ print $2; exit }')" || true
  fi
  echo "${state:-GONE}"
}

# A word quoted for supervisord's command line (shlex), with `%` doubled (its
# configuration files expand %(name)s).
supervisor_quote() {
  local word=${1//\'/\'\\\'\'}
  word=${word//%/%%}
  printf "'%s'" "${word}"
}

# supervise KIND ID READY ENVFILE COMMAND...
# Adds COMMAND as program ID of this machine's supervisord, run with exactly the
# environment in ENVFILE (through supervised.sh, which records its pid), and
# waits until it is ready: READY is a port (it accepts connections on
# 127.0.0.1) or `log:TEXT` (TEXT appears in its log from now on).
# STOP_SIGNAL (default TERM) is the signal that stops it gracefully. A READY
# port already in use stops the script, unless the caller knows its own
# process holds it and the new one adopts that process
# (PORT_HELD_BY_OWN_PROCESS=true: the load balancer's NGINX).
supervise() {
  local kind=$1 id=$2 ready=$3 envfile=$4
  shift 4
  local pidfile logfile log_offset word command="" pid="" now n is_ready=false
  pidfile="$(state_path "${kind}" "${id}" pid)"
  logfile="$(state_path "${kind}" "${id}" log)"
  mkdir -p "$(dirname "${pidfile}")"
  case "${ready}" in
    log:*) ;;
    *)
      if [ "${PORT_HELD_BY_OWN_PROCESS:-false}" != true ] && port_answers 127.0.0.1 "${ready}"; then
        die "port ${ready} is already in use: cannot start ${id} there"
      fi
      ;;
  esac
  ensure_supervisor
  # A supervisord started again starts the programs it had by itself: one of
  # them is already this one.
  case "$(program_state "${id}")" in
    RUNNING | STARTING | BACKOFF) log "${id} is already running (started again by supervisord)"; return 0 ;;
  esac
  for word in bash "${INFRA_DIR}/supervised.sh" "${pidfile}" "${envfile}" "$@"; do
    command+="${command:+ }$(supervisor_quote "${word}")"
  done
  # The stop signal goes to the program's own process only (gunicorn's master
  # deregisters and drains before it stops its workers); the SIGKILL after
  # stopwaitsecs goes to its whole group.
  printf '%s\n' "; Written by infrastructure/lib.sh (supervise): ${kind} ${id}." \
    "[program:${id}]" "command=${command}" \
    "autorestart=true" "startsecs=1" "startretries=3" \
    "stopsignal=${STOP_SIGNAL:-TERM}" "stopwaitsecs=${STOP_TIMEOUT_SECONDS}" \
    "stopasgroup=false" "killasgroup=true" \
    "redirect_stderr=true" "stdout_logfile=${logfile//%/%%}" "stdout_logfile_maxbytes=0" \
    >"${SUPERVISOR_DIR}/programs/${id}.conf"
  log_offset="$(stat -c %s "${logfile}" 2>/dev/null || echo 0)"
  rm -f "${pidfile}"
  supervisor_ctl update "${id}" >/dev/null
  for n in $(seq 1 600); do
    now=""
    { read -r now <"${pidfile}"; } 2>/dev/null || true
    [ -n "${pid}" ] || pid="${now}"
    if [ -n "${pid}" ]; then
      case "${ready}" in
        log:*) tail -c "+$((log_offset + 1))" "${logfile}" 2>/dev/null | grep -F -- "${ready#log:}" >/dev/null && is_ready=true ;;
        *) port_answers 127.0.0.1 "${ready}" && is_ready=true ;;
      esac
      # Whether it became ready, not which poll this was: the last one counts too.
      [ "${is_ready}" = false ] || break
      # Exited during start-up (supervisord would start it again, with a new pid).
      if ! process_alive "${pid}" || [ "${now}" != "${pid}" ]; then
        unsupervise "${id}"
        tail -n 40 "${logfile}" >&2 || true
        die "${id} exited during start-up (log: ${logfile})"
      fi
    elif [ $((n % 20)) -eq 0 ] && [ "$(program_state "${id}")" = FATAL ]; then
      unsupervise "${id}"
      tail -n 40 "${logfile}" >&2 || true
      die "${id} could not be started (log: ${logfile})"
    fi
    sleep 0.1
  done
  if [ "${is_ready}" = false ]; then
    unsupervise "${id}"
    die "${id} was not ready (${ready}) within 60s (log: ${logfile})"
  fi
  log "${id}: running, pid ${pid}, ready (${ready}), log ${logfile}"
}

# unsupervise ID: stop the program gracefully (supervisord SIGKILLs its group
# after STOP_TIMEOUT_SECONDS) and remove it from supervisord.
unsupervise() {
  local id=$1
  supervised "${id}" || return 0
  supervisor_ctl stop "${id}" >/dev/null 2>&1 || true
  rm -f "${SUPERVISOR_DIR}/programs/${id}.conf"
  supervisor_ctl update "${id}" >/dev/null 2>&1 || true
}

# Shut supervisord down once it has no program left, so that stopping the last
# piece leaves no process behind.
stop_idle_supervisor() {
  compgen -G "${SUPERVISOR_DIR}/programs/*.conf" >/dev/null && return 0
  supervisor_running || return 0
  supervisor_ctl shutdown >/dev/null 2>&1 || true
  for _ in $(seq 1 100); do
    supervisor_running || break
    sleep 0.1
  done
  log "supervisord of this machine: stopped"
}

# --- service instances (both runtimes) ---------------------------------------------

# What every service instance is given, by name; each deploy script sets the
# others. A name left unset (or empty) here takes the service's own default,
# declared once in core/config.py: JSON_BODY_LIMIT, READS_REQUIRE_MEMBER and the
# discovery timings are the caller's to change (the test suite shortens the
# timings), never restated here.
INSTANCE_VARIABLES=(
  APP_ENV PORT BIND_HOST JSON_BODY_LIMIT READS_REQUIRE_MEMBER
  PGUSER PGPORT PGHOST PGPASSWORD PGDATABASE
  AMQPHOST AMQPPORT
  CONSUL_HOST CONSUL_PORT CONSUL_SERVICE_NAME CONSUL_SERVICE_ADDRESS
  CONSUL_CHECK_INTERVAL CONSUL_DEREGISTER_CRITICAL_AFTER CONSUL_RETRY_INTERVAL SHUTDOWN_DRAIN_SECONDS
)

# choose_listen_address DOCKER_PORT: set PORT, BIND_HOST and CONSUL_SERVICE_ADDRESS.
# Every container has an address of its own, so all listen on DOCKER_PORT and
# the instance detects the address it registers; local instances share this
# machine's loopback, so each takes a free port there.
choose_listen_address() {
  if [ "${MESSENGER_RUNTIME}" = docker ]; then
    PORT=$1
    BIND_HOST=""  # the service's default: every address of its container
    CONSUL_SERVICE_ADDRESS=""
  else
    PORT="$(free_port)"
    BIND_HOST=127.0.0.1
    CONSUL_SERVICE_ADDRESS="${BIND_HOST}"
  fi
}

# start_instance KIND ID VAR...: run one instance of the messenger image (or,
# locally, the project's gunicorn) with exactly the named variables, which the
# caller has set. In the local runtime PORT must be a free port.
# A caller that runs something else from the same image (the event worker) sets
# INSTANCE_COMMAND (the command, relative to the image's PATH or the venv's
# bin) and INSTANCE_READY (a supervise READY, e.g. log:ready.). Local
# instances are programs of this machine's supervisord (see supervise), which
# starts one again when it dies; containers have the engine's restart policy.
# INSTANCE_DOCKER_ARGS: more `docker run` flags for its container.
INSTANCE_COMMAND=()
INSTANCE_READY=""
INSTANCE_DOCKER_ARGS=()
start_instance() {
  local kind=$1 id=$2
  shift 2
  local name
  # shellcheck disable=SC2163  # the arguments are names of variables to export
  export "$@"
  if [ "${MESSENGER_RUNTIME}" = docker ]; then
    local -a env_flags=()
    for name in "$@"; do env_flags+=(-e "${name}"); done
    # `-e NAME` passes the value from this environment, so no secret appears
    # on a command line.
    docker_run_once "${id}" \
      --label "messenger.kind=${kind}" \
      --stop-timeout "${STOP_TIMEOUT_SECONDS}" \
      ${INSTANCE_DOCKER_ARGS[@]+"${INSTANCE_DOCKER_ARGS[@]}"} \
      "${env_flags[@]}" \
      "${MESSENGER_IMAGE}" ${INSTANCE_COMMAND[@]+"${INSTANCE_COMMAND[@]}"}
    return 0
  fi
  [ -x "${MESSENGER_VENV}/bin/gunicorn" ] || die "no gunicorn in ${MESSENGER_VENV}: run 'make venv' first"
  local envfile
  envfile="$(state_path "${kind}" "${id}" env)"
  mkdir -p "$(dirname "${envfile}")"
  # The instance's whole environment, kept (owner-only) so that
  # messenger-exec.sh can run a job with exactly the same one.
  (
    umask 077
    printf '%s\n' "PATH=${MESSENGER_VENV}/bin:/usr/local/bin:/usr/bin:/bin" "HOME=${HOME:-/root}" "LANG=C.UTF-8"
    # A name the caller left unset is written empty: the service reads that as its default.
    for name in "$@"; do printf '%s=%s\n' "${name}" "${!name:-}"; done
  ) >"${envfile}"
  if [ "${#INSTANCE_COMMAND[@]}" -gt 0 ]; then
    supervise "${kind}" "${id}" "${INSTANCE_READY:-${PORT}}" "${envfile}" \
      "${MESSENGER_VENV}/bin/${INSTANCE_COMMAND[0]}" "${INSTANCE_COMMAND[@]:1}"
  else
    supervise "${kind}" "${id}" "${PORT}" "${envfile}" \
      "${MESSENGER_VENV}/bin/gunicorn" -c messenger/gunicorn_conf.py messenger.wsgi
  fi
}

instance_running() {  # kind id
  if [ "${MESSENGER_RUNTIME}" = docker ]; then
    [ -n "$(docker ps --quiet --filter "name=^$2\$")" ]
  else
    [ -n "$(running_pid "$(state_path "$1" "$2" pid)")" ]
  fi
}

# stop_instance KIND ID: stop one instance gracefully in the current runtime.
stop_instance() {
  local kind=$1 id=$2
  if [ "${MESSENGER_RUNTIME}" = docker ]; then
    docker_remove "${id}"
  elif supervised "${id}"; then
    unsupervise "${id}"
    rm -f "$(state_path "${kind}" "${id}" pid)" "$(state_path "${kind}" "${id}" env)"
    log "${id}: stopped"
  else
    # No program of supervisord: what its pid file names is gone.
    [ ! -e "$(state_path "${kind}" "${id}" pid)" ] || log "${id}: was not running (stale pid file removed)"
    rm -f "$(state_path "${kind}" "${id}" pid)" "$(state_path "${kind}" "${id}" env)"
  fi
}

# A local instance counts as live while its supervisord runs it or is starting
# it again; one it gave up on (FATAL), or that no supervisord has, is dead. A
# container is live while it runs or the engine is restarting it.
instance_live() {  # kind id
  if [ "${MESSENGER_RUNTIME}" = docker ]; then
    case "$(docker inspect --format '{{.State.Status}}' "$2" 2>/dev/null)" in
      running | restarting | created) return 0 ;;
      *) return 1 ;;
    esac
  else
    case "$(program_state "$2")" in
      RUNNING | STARTING | BACKOFF) return 0 ;;
      *) return 1 ;;
    esac
  fi
}

# Instances of KIND in the current runtime, one id per line: containers (also
# one the engine is restarting, or one that stopped), or local instances with
# a pid file.
instances() {  # kind
  if [ "${MESSENGER_RUNTIME}" = docker ]; then
    docker ps --all --filter "label=messenger.kind=$1" --format '{{.Names}}'
  else
    local_instances "$1"
  fi
}
