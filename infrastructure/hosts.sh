#!/usr/bin/env bash
# Several hosts on this machine: each host is a network namespace
# (messenger-host-1 .. messenger-host-N) with an address of its own on one
# bridge, which this machine (the edge: NGINX, a Consul client agent) joins too.
# The deploy scripts put a piece on a host when their caller says which
# (DEPLOY_HOST=messenger-host-2); `make up HOSTS=3` does it all.
#
#   ./infrastructure/hosts.sh up N          # the bridge and hosts 1..N (safe to run again)
#   ./infrastructure/hosts.sh down          # every host and the bridge, and whatever still runs there
#   ./infrastructure/hosts.sh list          # the hosts, one name per line
#   ./infrastructure/hosts.sh boot HOST     # start HOST's supervisord again (after the host was lost): it starts its programs
#   ./infrastructure/hosts.sh cut HOST      # take HOST's link down (no process is touched)
#   ./infrastructure/hosts.sh restore HOST  # bring HOST's link up again
#
# Addresses: the project's range is 10.77.0.0/16; this bridge is 10.77.1.0/24,
# the edge 10.77.1.1 and host N 10.77.1.(10+N). Nothing else is addressed.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

# This configuration requires a new commit to change
BRIDGE=messenger-br0
HOST_PREFIX=messenger-host-
SUBNET_PREFIX=10.77.1
EDGE_ADDRESS="${SUBNET_PREFIX}.1"
PREFIX_LENGTH=24
FIRST_HOST_OCTET=10  # host N is ${SUBNET_PREFIX}.(10+N)
MAX_HOSTS=9

usage() {
  printf 'usage: %s up N | down | list | boot HOST | cut HOST | restore HOST\n' "$0" >&2
  exit 2
}

hosts() { ip netns list | awk -v prefix="${HOST_PREFIX}" 'index($1, prefix) == 1 { print $1 }' | sort -V; }
host_link() { printf 'mh-%s' "${1#"${HOST_PREFIX}"}"; }  # the bridge's end of the host's link

require_host() {
  hosts | grep -qx -- "$1" || die "no host '$1' (known: $(hosts | tr '\n' ' '))"
}

up() {
  local count=$1 n host link
  [[ "${count}" =~ ^[1-9]$ ]] && [ "${count}" -le "${MAX_HOSTS}" ] || die "N must be 1..${MAX_HOSTS}, not '${count}'"
  if ! ip link show "${BRIDGE}" >/dev/null 2>&1; then
    ip link add "${BRIDGE}" type bridge
    ip addr add "${EDGE_ADDRESS}/${PREFIX_LENGTH}" dev "${BRIDGE}"
    log "bridge ${BRIDGE}: ${EDGE_ADDRESS}/${PREFIX_LENGTH} (this machine, the edge)"
  fi
  ip link set "${BRIDGE}" up
  for n in $(seq 1 "${count}"); do
    host="${HOST_PREFIX}${n}"
    link="$(host_link "${host}")"
    if hosts | grep -qx -- "${host}"; then continue; fi
    ip netns add "${host}"
    ip link add "${link}" type veth peer name eth0 netns "${host}"
    ip link set "${link}" master "${BRIDGE}" up
    ip -n "${host}" addr add "${SUBNET_PREFIX}.$((FIRST_HOST_OCTET + n))/${PREFIX_LENGTH}" dev eth0
    ip -n "${host}" link set eth0 up
    ip -n "${host}" link set lo up
    log "${host}: ${SUBNET_PREFIX}.$((FIRST_HOST_OCTET + n))"
  done
}

# Whatever still runs on a host is SIGKILLed (the stack stops its pieces
# gracefully first); then the host, its link and the bridge are removed.
down() {
  local host pids
  for host in $(hosts); do
    mapfile -t pids < <(ip netns pids "${host}")
    if [ "${#pids[@]}" -gt 0 ]; then
      kill -KILL "${pids[@]}" 2>/dev/null || true
      log "${host}: killed ${#pids[@]} leftover process(es)"
    fi
    for _ in $(seq 1 50); do
      [ -z "$(ip netns pids "${host}")" ] && break
      sleep 0.1
    done
    # The link first: deleting it removes both of its ends at once, where the
    # kernel would remove them some time after the namespace.
    if ip link show "$(host_link "${host}")" >/dev/null 2>&1; then ip link delete "$(host_link "${host}")"; fi
    ip netns delete "${host}"
    # A host whose supervisord was killed leaves its pid file and socket behind.
    rm -f "$(supervisor_dir "${host}")/supervisord.pid" "$(supervisor_socket "${host}")"
    log "${host}: removed"
  done
  if ip link show "${BRIDGE}" >/dev/null 2>&1; then
    ip link delete "${BRIDGE}"
    log "bridge ${BRIDGE}: removed"
  fi
}

case "${1:-}" in
  up) [ "$#" -eq 2 ] || usage; up "$2" ;;
  down) [ "$#" -eq 1 ] || usage; down ;;
  list) hosts ;;
  boot)
    [ "$#" -eq 2 ] || usage
    require_host "$2"
    ensure_supervisor "$2"
    ;;
  cut | restore)
    [ "$#" -eq 2 ] || usage
    require_host "$2"
    if [ "$1" = cut ]; then state=down; else state=up; fi
    ip link set "$(host_link "$2")" "${state}"
    log "$2: link $(host_link "$2") ${state}"
    ;;
  *) usage ;;
esac
