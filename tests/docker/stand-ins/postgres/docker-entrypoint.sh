#!/bin/bash
# What the official postgres image's entry point does, for a first start and
# every start after it: make the cluster in PGDATA with POSTGRES_USER and
# POSTGRES_PASSWORD (scram-sha-256 for connections over the network, trust on
# the container's own socket), create POSTGRES_DB, run
# /docker-entrypoint-initdb.d/*.sql and *.sh once, then exec the server.
set -euo pipefail

INITDB_DIR=/docker-entrypoint-initdb.d

# `docker run postgres -c setting=value` means the server with those flags.
if [ "${1:0:1}" = - ]; then
  set -- postgres "$@"
fi

if [ "$1" = postgres ] && [ "$(id -u)" = 0 ]; then
  # As root: give the data folder (perhaps a fresh volume) to postgres, then
  # run this script again as that user.
  mkdir -p "${PGDATA}"
  chown postgres:postgres "${PGDATA}"
  chmod 700 "${PGDATA}"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ "$1" = postgres ] && [ ! -s "${PGDATA}/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?the database is uninitialized and POSTGRES_PASSWORD is not set}"
  POSTGRES_USER="${POSTGRES_USER:-postgres}"
  POSTGRES_DB="${POSTGRES_DB:-${POSTGRES_USER}}"
  # shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a list of flags
  initdb --username="${POSTGRES_USER}" --pwfile=<(printf '%s\n' "${POSTGRES_PASSWORD}") ${POSTGRES_INITDB_ARGS:-}
  printf '\nhost all all all scram-sha-256\n' >>"${PGDATA}/pg_hba.conf"
  # A server on the socket only while the database is prepared.
  pg_ctl -D "${PGDATA}" -o "-c listen_addresses=''" -w start
  psql=(psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER}" --dbname postgres)
  if [ "${POSTGRES_DB}" != postgres ]; then
    "${psql[@]}" --set db="${POSTGRES_DB}" <<<'CREATE DATABASE :"db";'
  fi
  for file in "${INITDB_DIR}"/*; do
    case "${file}" in
      *.sql) "${psql[@]}" --dbname "${POSTGRES_DB}" -f "${file}" ;;
      *.sh) bash "${file}" ;;
      *) ;;
    esac
  done
  pg_ctl -D "${PGDATA}" -m fast -w stop
fi

exec "$@"
