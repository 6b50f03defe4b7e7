#!/bin/sh
# What the official hashicorp/consul image's entry point does for the commands
# the project runs: `agent ...` gets the image's data and config folders; a
# leading flag means `agent`; any other Consul subcommand (kv, members, ...)
# runs as `consul SUBCOMMAND`; anything else runs as it is.
set -eu

CONSUL_DATA_DIR=/consul/data
CONSUL_CONFIG_DIR=/consul/config

if [ "${1#-}" != "${1:-}" ]; then
  set -- agent "$@"
fi
if [ "${1:-}" = agent ]; then
  shift
  set -- consul agent -data-dir="${CONSUL_DATA_DIR}" -config-dir="${CONSUL_CONFIG_DIR}" "$@"
elif [ "${1:-}" != consul ] && consul "$1" --help >/dev/null 2>&1; then
  set -- consul "$@"
fi
exec "$@"
