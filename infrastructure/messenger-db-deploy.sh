#!/usr/bin/env bash
# The messenger team's database. Starts PostgreSQL (Docker runtime) or uses the
# one this machine runs (local runtime), makes sure the migrator role exists,
# and writes where and how to connect to Consul KV, where the services deployed
# after it read them. Safe to run again.
#
#   CONSUL_HOST=127.0.0.1 CONSUL_PORT=8500 ./infrastructure/messenger-db-deploy.sh
#
# MESSENGER_RUNTIME=docker|local chooses the runtime (default: Docker when an
# engine answers). See infrastructure/lib.sh for CONSUL_HTTP_ADDR.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

# This configuration requires a new commit to change
PORT=5432
POSTGRES_USER=postgres
# NOTE: Never do this in a real-world deployment. Store passwords
# only in an encrypted secrets store.
POSTGRES_PASSWORD=postgres
# Migration user
POSTGRES_MIGRATOR_USER=messenger_migrator
# NOTE: As above, never do this in a real deployment.
POSTGRES_MIGRATOR_PASSWORD=migrator_password
POSTGRES_IMAGE=postgres:15
DB_CONTAINER=messenger-db-primary  # also its host name on the Docker network

# Local runtime: where this machine's PostgreSQL listens (its superuser is
# POSTGRES_USER; a cluster with trust auth does not check the password).
LOCAL_PGHOST="${LOCAL_PGHOST:-127.0.0.1}"
LOCAL_PGPORT="${LOCAL_PGPORT:-${PORT}}"

select_runtime
require_consul_location

if [ "${MESSENGER_RUNTIME}" = docker ]; then
  if [ -n "$(docker ps --quiet --filter "name=^${DB_CONTAINER}\$")" ]; then
    log "${DB_CONTAINER} is already running"
  else
    export POSTGRES_USER POSTGRES_PASSWORD
    docker run \
      --rm \
      --name "${DB_CONTAINER}" \
      -d \
      -v db-data:/var/lib/postgresql/data/pgdata \
      -e POSTGRES_USER \
      -e POSTGRES_PASSWORD \
      -e PGPORT="${PORT}" \
      -e PGDATA=/var/lib/postgresql/data/pgdata \
      --network "${MESSENGER_DOCKER_NETWORK}" \
      "${POSTGRES_IMAGE}" >/dev/null
    log "${DB_CONTAINER}: container started"
  fi
  DB_HOST="${DB_CONTAINER}"
  DB_PORT="${PORT}"
  ready() { docker exec "${DB_CONTAINER}" pg_isready -q -U "${POSTGRES_USER}" -p "${PORT}"; }
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

# The seed creates the migrator by hand (CREATE USER ... WITH SUPERUSER); here
# it is created once, and an existing role is left as it is.
run_psql -v ON_ERROR_STOP=1 -v migrator_user="${POSTGRES_MIGRATOR_USER}" \
  -v migrator_password="${POSTGRES_MIGRATOR_PASSWORD}" <<'SQL'
SELECT format('CREATE ROLE %I WITH LOGIN SUPERUSER PASSWORD %L', :'migrator_user', :'migrator_password')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'migrator_user') \gexec
SQL
log "PostgreSQL at ${DB_HOST}:${DB_PORT} is ready; role ${POSTGRES_MIGRATOR_USER} exists"

kv_put messenger-db-port "${DB_PORT}"
kv_put messenger-db-host "${DB_HOST}"
kv_put messenger-db-application-user "${POSTGRES_USER}"
kv_put messenger-db-password-never-do-this "${POSTGRES_PASSWORD}"
kv_put messenger-db-migrator-user "${POSTGRES_MIGRATOR_USER}"
kv_put messenger-db-migrator-password-never-do-this "${POSTGRES_MIGRATOR_PASSWORD}"
log "Done registering postgres details with Consul at ${CONSUL_URL}"
