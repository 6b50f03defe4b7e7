#!/usr/bin/env bash
# Stops the database messenger-db-deploy.sh started (Docker runtime: the
# messenger-db-primary container is stopped and removed). Its data stays in
# the db-data volume unless --volume is given, which removes that too, as the
# seed's cleanup does. The local runtime uses this machine's PostgreSQL, which
# is left running as messenger-db-deploy.sh found it.
#
#   ./infrastructure/messenger-db-stop.sh            # the container; the data is kept
#   ./infrastructure/messenger-db-stop.sh --volume   # the container and its data
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

# This configuration requires a new commit to change
DB_CONTAINER=messenger-db-primary
DB_VOLUME=db-data

REMOVE_VOLUME=false
case "${1:-}" in
  --volume) REMOVE_VOLUME=true ;;
  "") ;;
  *)
    printf 'usage: %s [--volume]\n' "$0" >&2
    exit 2
    ;;
esac

select_runtime
if [ "${MESSENGER_RUNTIME}" != docker ]; then
  log "local runtime: this machine's PostgreSQL is left running"
  exit 0
fi
# The image's stop signal is SIGINT: PostgreSQL's fast shutdown.
docker_remove "${DB_CONTAINER}"
if [ "${REMOVE_VOLUME}" = true ] && docker volume inspect "${DB_VOLUME}" >/dev/null 2>&1; then
  docker volume rm "${DB_VOLUME}" >/dev/null
  log "volume ${DB_VOLUME}: removed"
fi
