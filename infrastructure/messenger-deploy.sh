#!/usr/bin/env bash
# shellcheck disable=SC2034  # the instance's variables go to start_instance by name
# Starts one more messenger instance each time it runs. The instance registers
# itself in Consul as "messenger" (so the load balancer finds it) and leaves on
# SIGTERM; stop it with infrastructure/messenger-stop.sh.
#
#   CONSUL_HOST=127.0.0.1 CONSUL_PORT=8500 ./infrastructure/messenger-deploy.sh
#
# Docker runtime: a container of the `messenger` image on the platform's
# network, listening on 4000 at its own address. Local runtime: the project's
# gunicorn on a free loopback port, a program of this machine's supervisord
# (which starts it again if it dies); pid, log and environment under
# ${MESSENGER_STATE_DIR:-.state}/messenger/. MESSENGER_RUNTIME=docker|local
# chooses (default: Docker when an engine answers).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

# This configuration requires a new commit to change
# (The service's own defaults, JSON_BODY_LIMIT's among them, are core/config.py's.)
APP_ENV=production
CONSUL_SERVICE_NAME=messenger
DOCKER_PORT=4000

# The database's name, unless the caller names another (the test suite does).
PGDATABASE="${MESSENGER_DB_NAME}"

# Consul host and port come from the caller: we cannot query Consul until we
# know them.
select_runtime
require_consul_location

# Postgres and RabbitMQ configuration by pulling information from the system
# (Consul KV): the application's role.
read_connection_details "${KV_DB_APPLICATION_USER}" "${KV_DB_APPLICATION_PASSWORD}"

choose_listen_address "${DOCKER_PORT}"
if [ "${MESSENGER_RUNTIME}" = docker ]; then
  INSTANCE_ID="messenger-$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
else
  INSTANCE_ID="messenger-${PORT}"
fi

start_instance "${CONSUL_SERVICE_NAME}" "${INSTANCE_ID}" "${INSTANCE_VARIABLES[@]}"
echo "${INSTANCE_ID}"
