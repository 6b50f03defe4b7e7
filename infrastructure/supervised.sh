#!/usr/bin/env bash
# What supervisord runs for each program of infrastructure/lib.sh's supervise:
# records its pid, then becomes COMMAND with exactly the environment in ENVFILE
# (the file messenger-exec.sh reads too), from the repository's root. The pid
# stays the same through each exec, so PIDFILE names the program itself, also
# after supervisord started it again.
#
#   supervised.sh PIDFILE ENVFILE COMMAND [ARG...]
set -euo pipefail

PIDFILE=$1
ENVFILE=$2
shift 2

mapfile -t ENVIRONMENT <"${ENVFILE}"
echo "$$" >"${PIDFILE}"
cd "$(dirname "$0")/.."
exec env -i "${ENVIRONMENT[@]}" "$@"
