#!/usr/bin/env bash
# Runs a command inside a running instance, with the instance's environment:
# `docker exec` in the Docker runtime, and its local equivalent (the same
# environment the instance was started with, from the state folder) otherwise.
# The seed's one-off jobs run this way in the migrator instance:
#
#   ./infrastructure/messenger-exec.sh -e PGDATABASE=postgres -e CREATE_DB_NAME=messenger \
#       messenger-migrator python manage.py create_db
#   ./infrastructure/messenger-exec.sh messenger-migrator python manage.py migrate
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

usage() {
  printf 'usage: %s [-e NAME=VALUE]... ID COMMAND [ARG...]\n' "$0" >&2
  exit 2
}

EXTRA_ENV=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    -e) [ "$#" -ge 2 ] || usage; EXTRA_ENV+=("$2"); shift 2 ;;
    -h | --help) usage ;;
    -*) usage ;;
    *) break ;;
  esac
done
[ "$#" -ge 2 ] || usage
ID=$1
shift

select_runtime
if [ "${MESSENGER_RUNTIME}" = docker ]; then
  DOCKER_ENV=()
  for assignment in "${EXTRA_ENV[@]}"; do DOCKER_ENV+=(-e "${assignment}"); done
  exec docker exec -i "${DOCKER_ENV[@]}" "${ID}" "$@"
fi

shopt -s nullglob
ENVFILES=("${MESSENGER_STATE_DIR}"/*/"${ID}.env")
[ "${#ENVFILES[@]}" -eq 1 ] || die "no running instance '${ID}' under ${MESSENGER_STATE_DIR}"
[ -n "$(running_pid "${ENVFILES[0]%.env}.pid")" ] || die "instance '${ID}' is not running"
mapfile -t ENVIRONMENT <"${ENVFILES[0]}"
cd "${REPO_ROOT}"
exec env -i "${ENVIRONMENT[@]}" ${EXTRA_ENV[@]+"${EXTRA_ENV[@]}"} "$@"
