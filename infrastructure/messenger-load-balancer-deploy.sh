#!/usr/bin/env bash
# Starts the load balancer: NGINX on port 8085 in front of every passing
# instance of "messenger" in Consul's catalog, its upstream list following the
# catalog as instances come and go. Safe to run again: a running load balancer
# is left as it is.
#
#   CONSUL_HOST=127.0.0.1 CONSUL_PORT=8500 ./infrastructure/messenger-load-balancer-deploy.sh
#
# Docker runtime: the seed's container of the `messenger-lb` image (build it
# with `docker build -t messenger-lb load-balancer`), where consul-template
# renders the upstream list. Local runtime: load-balancer/upstream_watcher.py
# does consul-template's job and runs this machine's NGINX as its own daemon;
# the watcher is a program of this machine's supervisord, like every local
# process of the system, which starts it again when it dies (the new watcher
# adopts the NGINX that still runs, or starts one). The watcher's pid and log,
# and NGINX's configuration, pid and logs, live under
# ${MESSENGER_STATE_DIR:-.state}/load-balancer/. MESSENGER_RUNTIME=docker|local
# chooses (default: Docker when an engine answers). Stop it with
# infrastructure/messenger-load-balancer-stop.sh.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

# This configuration requires a new commit to change
LB_IMAGE=messenger-lb
LB_NAME=messenger-lb
SERVICE_NAME=messenger

# The port the load balancer answers on (docker/.env's LB_PORT, the seed's
# 8085; the image's own is docker/.env's LB_CONTAINER_PORT), and in the local runtime the address NGINX listens on (every address
# by default). The test suite sets both to a free loopback port.
LB_BIND="${LB_BIND:-}"

# Consul host and port come from the caller: we cannot query Consul until we
# know them.
select_runtime
require_consul_location

if [ "${MESSENGER_RUNTIME}" = docker ]; then
  docker image inspect "${LB_IMAGE}" >/dev/null 2>&1 ||
    die "no image '${LB_IMAGE}': build it first with 'docker build -t ${LB_IMAGE} load-balancer'"
  # The container reaches the agent by its name on the platform's network.
  docker_run_once "${LB_NAME}" \
    -e CONSUL_URL="${CONSUL_HOST}:${CONSUL_PORT}" \
    -p "${LB_PORT}:${LB_CONTAINER_PORT}" \
    "${LB_IMAGE}"
  log "${LB_NAME}: answering on port ${LB_PORT}"
  exit 0
fi

if instance_running load-balancer "${LB_NAME}"; then
  log "${LB_NAME} is already running (log: $(state_path load-balancer "${LB_NAME}" log))"
  exit 0
fi
command -v nginx >/dev/null 2>&1 || die "nginx not found: run 'make system-deps'"
command -v python3 >/dev/null 2>&1 || die "python3 not found"
# An NGINX of ours that outlived its watcher still holds the port; the new
# watcher adopts it rather than starting another.
if [ -n "$(running_pid "${MESSENGER_STATE_DIR}/load-balancer/nginx/nginx.pid")" ]; then
  PORT_HELD_BY_OWN_PROCESS=true
fi

ENVFILE="$(state_path load-balancer "${LB_NAME}" env)"
mkdir -p "$(dirname "${ENVFILE}")"
printf '%s\n' "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" "HOME=${HOME:-/root}" \
  "LANG=C.UTF-8" >"${ENVFILE}"
# This host reaches the agent at CONSUL_URL (see require_consul_location).
supervise load-balancer "${LB_NAME}" "${LB_PORT}" "${ENVFILE}" \
  python3 load-balancer/upstream_watcher.py \
  --state-dir "${MESSENGER_STATE_DIR}/load-balancer/nginx" \
  --consul "${CONSUL_URL}" \
  --service "${SERVICE_NAME}" \
  --port "${LB_PORT}" \
  --bind "${LB_BIND}"
log "load balancer: http://${LB_BIND:-localhost}:${LB_PORT}/ (NGINX logs: ${MESSENGER_STATE_DIR}/load-balancer/nginx/logs)"
