#!/usr/bin/env bash
# Stops messenger instances gracefully: each deregisters from Consul, keeps
# serving for its drain period while the load balancer drops it, then finishes
# its requests and exits.
#
#   ./infrastructure/messenger-stop.sh --all                 # every messenger instance
#   ./infrastructure/messenger-stop.sh messenger-41237 ...   # these instances (ids as deploy printed them)
#   ./infrastructure/messenger-stop.sh --service messenger-migrator messenger-migrator
#
# Runs in the same runtime as the deploy scripts (MESSENGER_RUNTIME, default:
# Docker when an engine answers).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

usage() {
  printf 'usage: %s [--service NAME] (--all | ID...)\n' "$0" >&2
  exit 2
}

SERVICE=messenger
ALL=false
IDS=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    --service) [ "$#" -ge 2 ] || usage; SERVICE=$2; shift 2 ;;
    --all) ALL=true; shift ;;
    -h | --help) usage ;;
    -*) usage ;;
    *) IDS+=("$1"); shift ;;
  esac
done
if [ "${ALL}" = true ]; then
  [ "${#IDS[@]}" -eq 0 ] || usage
else
  [ "${#IDS[@]}" -gt 0 ] || usage
fi

select_runtime
mapfile -t KNOWN < <(instances "${SERVICE}")
if [ "${ALL}" = true ]; then
  IDS=("${KNOWN[@]}")
  [ "${#IDS[@]}" -gt 0 ] || { log "no ${SERVICE} instance is running"; exit 0; }
else
  for id in "${IDS[@]}"; do
    # Not grep -q: leaving at the first match can end printf's next write with SIGPIPE, and pipefail
    # then counts the id as unknown (a fresh-clone run's make scale N=3 met it).
    printf '%s\n' "${KNOWN[@]}" | grep -x -- "${id}" >/dev/null ||
      die "no ${SERVICE} instance '${id}' (known: ${KNOWN[*]:-none})"
  done
fi

# All at once: each waits out its own drain and graceful stop.
PIDS=()
for id in "${IDS[@]}"; do
  stop_instance "${SERVICE}" "${id}" &
  PIDS+=("$!")
done
STATUS=0
for pid in "${PIDS[@]}"; do
  wait "${pid}" || STATUS=1
done
# supervisord left with nothing to run stops too.
[ "${MESSENGER_RUNTIME}" = docker ] || stop_idle_supervisor
exit "${STATUS}"
