#!/usr/bin/env bash
# shellcheck disable=SC2034  # the instance's variables go to start_instance by name
# Starts the migrator: a messenger instance that connects with the migrator
# role and registers in Consul as "messenger-migrator", so the load balancer
# never routes to it. The one-off jobs then run inside it, and it is stopped:
#
#   CONSUL_HOST=127.0.0.1 CONSUL_PORT=8500 ./infrastructure/messenger-db-migrator-deploy.sh
#   ./infrastructure/messenger-exec.sh -e PGDATABASE=postgres -e CREATE_DB_NAME=messenger \
#       messenger-migrator python manage.py create_db
#   ./infrastructure/messenger-exec.sh messenger-migrator python manage.py migrate
#   ./infrastructure/messenger-exec.sh messenger-migrator python manage.py seed
#   ./infrastructure/messenger-stop.sh --service messenger-migrator messenger-migrator
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

# This configuration requires a new commit to change
# (The service's own defaults, JSON_BODY_LIMIT's among them, are core/config.py's.)
APP_ENV=production
CONSUL_SERVICE_NAME=messenger-migrator
INSTANCE_ID=messenger-migrator
DOCKER_PORT=4000

# The database's name, unless the caller names another (the test suite does).
PGDATABASE="${MESSENGER_DB_NAME}"

# Consul host and port come from the caller.
select_runtime
require_consul_location

# Get the migrator user name and password, and where Postgres and RabbitMQ are
read_connection_details "${KV_DB_MIGRATOR_USER}" "${KV_DB_MIGRATOR_PASSWORD}"

# `migrate` gives the application role row access to every table it creates.
DB_APPLICATION_USER="$(kv_get "${KV_DB_APPLICATION_USER}")"

# The migrator is what applies the migrations, so it starts before they are.
REQUIRE_MIGRATED_DB=false
# A migration may run longer than any request may (0: no statement timeout).
PG_STATEMENT_TIMEOUT=0

if instance_running "${CONSUL_SERVICE_NAME}" "${INSTANCE_ID}"; then
  die "${INSTANCE_ID} is already running: stop it first (infrastructure/messenger-stop.sh --service ${CONSUL_SERVICE_NAME} ${INSTANCE_ID})"
fi
choose_listen_address "${DOCKER_PORT}"

start_instance "${CONSUL_SERVICE_NAME}" "${INSTANCE_ID}" "${INSTANCE_VARIABLES[@]}" \
  REQUIRE_MIGRATED_DB DB_APPLICATION_USER PG_STATEMENT_TIMEOUT
echo "${INSTANCE_ID}"
