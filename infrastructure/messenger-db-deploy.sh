#!/usr/bin/env bash
# The messenger team's database. Starts PostgreSQL (Docker runtime) or uses the
# one this machine runs (local runtime). Then it makes sure the application and
# migrator roles exist (infrastructure/sql/roles.sql), and writes where and how
# to connect to Consul KV, where the services deployed after it read them. Safe
# to run again.
#
#   CONSUL_HOST=127.0.0.1 CONSUL_PORT=8500 ./infrastructure/messenger-db-deploy.sh
#
# MESSENGER_RUNTIME=docker|local chooses the runtime (default: Docker when an
# engine answers). See infrastructure/lib.sh for CONSUL_HTTP_ADDR.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

# This configuration requires a new commit to change. The port and the roles
# are docker/.env's (lib.sh read them), shared with compose: POSTGRES_PORT;
# POSTGRES_USER and POSTGRES_PASSWORD, the cluster's superuser, which only this
# script uses, to make the others; POSTGRES_APPLICATION_USER and its password,
# what serving instances connect as (it may read and write rows and nothing
# else: no CREATE, ALTER, DROP or TRUNCATE); POSTGRES_MIGRATOR_USER and its
# password, which owns the database it creates (create_db) and its schema, and
# is not a superuser.
PORT="${POSTGRES_PORT}"
DB_CONTAINER=messenger-db-primary  # also its host name on the Docker network
DB_VOLUME=db-data                  # the seed's; the image is docker/.env's POSTGRES_IMAGE

# The database the migrator creates and migrates, unless the caller names
# another (the test suite does). If it exists already, roles.sql hands it to
# the migrator and gives the application user its rows.
DB_NAME="${MESSENGER_DB_NAME}"

# Local runtime: where this machine's PostgreSQL listens (its superuser is
# POSTGRES_USER; a cluster with trust auth does not check the password).
LOCAL_PGHOST="${LOCAL_PGHOST:-127.0.0.1}"
LOCAL_PGPORT="${LOCAL_PGPORT:-${PORT}}"

select_runtime
require_consul_location

if [ "${MESSENGER_RUNTIME}" = docker ]; then
  export POSTGRES_USER POSTGRES_PASSWORD
  docker_run_once "${DB_CONTAINER}" \
    -v "${DB_VOLUME}:/var/lib/postgresql/data/pgdata" \
    -e POSTGRES_USER \
    -e POSTGRES_PASSWORD \
    -e PGPORT="${PORT}" \
    -e PGDATA=/var/lib/postgresql/data/pgdata \
    "${POSTGRES_IMAGE}"
  DB_HOST="${DB_CONTAINER}"
  DB_PORT="${PORT}"
  # Over TCP: on a first start the image's entry point prepares the database
  # with a server on the socket only, then restarts it; the socket answering
  # does not mean the real server is up yet.
  ready() { docker exec "${DB_CONTAINER}" pg_isready -q -h 127.0.0.1 -U "${POSTGRES_USER}" -p "${PORT}"; }
  run_psql() { docker exec -i "${DB_CONTAINER}" psql -X -q -U "${POSTGRES_USER}" -p "${PORT}" -d postgres "$@"; }
else
  command -v psql >/dev/null 2>&1 || die "psql not found: install PostgreSQL's client (postgresql-client)"
  DB_HOST="${LOCAL_PGHOST}"
  DB_PORT="${LOCAL_PGPORT}"
  ready() { pg_isready -q -h "${DB_HOST}" -p "${DB_PORT}"; }
  run_psql() { PGPASSWORD="${POSTGRES_PASSWORD}" psql -X -q -h "${DB_HOST}" -p "${DB_PORT}" -U "${POSTGRES_USER}" -d postgres "$@"; }
fi

for _ in $(seq 1 60); do
  ready && break
  sleep 1
done
ready || die "PostgreSQL at ${DB_HOST}:${DB_PORT} is not accepting connections after 60s"

# The seed makes the migrator a superuser by hand and serves as the superuser;
# here each job gets a role with only what it needs. Re-running updates the
# passwords and changes nothing else.
run_psql -v ON_ERROR_STOP=1 \
  -v app_user="${POSTGRES_APPLICATION_USER}" -v app_password="${POSTGRES_APPLICATION_PASSWORD}" \
  -v migrator_user="${POSTGRES_MIGRATOR_USER}" -v migrator_password="${POSTGRES_MIGRATOR_PASSWORD}" \
  -v db_name="${DB_NAME}" <"${INFRA_DIR}/sql/roles.sql"
log "PostgreSQL at ${DB_HOST}:${DB_PORT} is ready; roles ${POSTGRES_APPLICATION_USER} (application) and ${POSTGRES_MIGRATOR_USER} (migrator) exist"

kv_put "${KV_DB_PORT}" "${DB_PORT}"
kv_put "${KV_DB_HOST}" "${DB_HOST}"
kv_put "${KV_DB_APPLICATION_USER}" "${POSTGRES_APPLICATION_USER}"
# NOTE: Never do this in a real-world deployment. Store passwords
# only in an encrypted secrets store.
kv_put "${KV_DB_APPLICATION_PASSWORD}" "${POSTGRES_APPLICATION_PASSWORD}"
kv_put "${KV_DB_MIGRATOR_USER}" "${POSTGRES_MIGRATOR_USER}"
kv_put "${KV_DB_MIGRATOR_PASSWORD}" "${POSTGRES_MIGRATOR_PASSWORD}"
log "Done registering postgres details with Consul at ${CONSUL_URL}"
