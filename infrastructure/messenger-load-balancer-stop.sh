#!/usr/bin/env bash
# Stops the load balancer that messenger-load-balancer-deploy.sh started,
# gracefully: NGINX finishes the requests in flight before it exits.
#
#   ./infrastructure/messenger-load-balancer-stop.sh
#
# Runs in the same runtime as the deploy scripts (MESSENGER_RUNTIME, default:
# Docker when an engine answers).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

# This configuration requires a new commit to change
LB_NAME=messenger-lb

select_runtime

if [ "${MESSENGER_RUNTIME}" = docker ]; then
  # The image's STOPSIGNAL is SIGQUIT: NGINX's graceful stop.
  docker_remove "${LB_NAME}"
  exit 0
fi

# supervisord sends the watcher SIGTERM, and the watcher stops NGINX gracefully
# before it exits; the program leaves supervisord.
stop_instance load-balancer "${LB_NAME}"

# NGINX runs as its own daemon and outlives a watcher that could not stop it
# (killed with its supervisord): stop it too (SIGQUIT: graceful), waiting at
# most STOP_TIMEOUT_SECONDS.
NGINX_PIDFILE="${MESSENGER_STATE_DIR}/load-balancer/nginx/nginx.pid"
NGINX_PID="$(running_pid "${NGINX_PIDFILE}")"
if [ -z "${NGINX_PID}" ]; then
  rm -f "${NGINX_PIDFILE}"  # stale: NGINX is gone without removing it
else
  kill -QUIT "${NGINX_PID}" 2>/dev/null || true
  for _ in $(seq 1 $((STOP_TIMEOUT_SECONDS * 10))); do
    process_alive "${NGINX_PID}" || break
    sleep 0.1
  done
  if process_alive "${NGINX_PID}"; then
    kill -KILL "${NGINX_PID}" 2>/dev/null || true
    log "NGINX (pid ${NGINX_PID}): killed after ${STOP_TIMEOUT_SECONDS}s without a graceful exit"
  else
    log "NGINX (pid ${NGINX_PID}): stopped"
  fi
fi
# supervisord left with nothing to run stops too.
stop_idle_supervisor
