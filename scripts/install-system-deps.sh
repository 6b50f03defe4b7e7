#!/usr/bin/env bash
# Installs the system pieces the test suite and the local topology need, from
# Debian's packages: NGINX, a Consul agent, supervisord (which runs the local
# runtime's instances and starts one again when it dies), Chromium for browser
# tests, the benchmark tools, and Docker: Debian's engine (docker.io; nothing
# starts it: scripts/ensure-docker.sh does, with the project's network
# settings), docker-compose 1.29, and debootstrap, which builds stand-ins for
# official images where no image registry answers (tests/docker/stand-ins/).
# Idempotent: a machine that has everything installs nothing.
#
# Consul is not packaged for bookworm; Debian's older "bullseye" suite carries a
# real agent (1.8.7). We add that suite on the same mirror this machine already
# uses (read from its own apt sources, never hard-coded) and pin it low, so it
# only ever supplies packages that bookworm lacks.
set -euo pipefail

PACKAGES=(nginx supervisor chromium chromium-driver wrk hyperfine curl jq docker.io docker-compose debootstrap)
BULLSEYE_LIST=/etc/apt/sources.list.d/messenger-bullseye.list
BULLSEYE_PIN=/etc/apt/preferences.d/messenger-bullseye

log() { printf '[install-system-deps] %s\n' "$*"; }

missing=()
for cmd in nginx supervisord chromium chromedriver wrk hyperfine curl jq dockerd docker-compose debootstrap consul; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
if [ "${#missing[@]}" -eq 0 ]; then
  log "all present: nginx supervisord consul chromium chromedriver wrk hyperfine curl jq dockerd docker-compose debootstrap"
  exit 0
fi
log "missing: ${missing[*]}"

if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi

mirror_uri() {
  # The first Debian (non-security) URI this machine's apt already uses.
  local uri=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    uri=$(awk '/^URIs:/ {print $2}' /etc/apt/sources.list.d/debian.sources | grep -v security | sed -n 1p || true)
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '/^deb / && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list || true)
  fi
  printf '%s' "$uri"
}

if ! command -v consul >/dev/null 2>&1 && [ ! -f "$BULLSEYE_LIST" ]; then
  uri=$(mirror_uri)
  if [ -z "$uri" ]; then
    echo "Cannot find this machine's Debian mirror in its apt sources; cannot add bullseye for consul." >&2
    exit 1
  fi
  log "adding the bullseye suite (for consul) on this machine's own mirror"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${uri} bullseye main" | $SUDO tee "$BULLSEYE_LIST" >/dev/null
  printf 'Package: *\nPin: release n=bullseye\nPin-Priority: 100\n' | $SUDO tee "$BULLSEYE_PIN" >/dev/null
fi

export DEBIAN_FRONTEND=noninteractive
log "apt-get update"
$SUDO apt-get update -qq
log "apt-get install ${PACKAGES[*]} consul"
$SUDO apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends -t bullseye consul >/dev/null
# The packages' own services are never used: the project runs NGINX and Consul
# as its own processes with its own config files.
if command -v systemctl >/dev/null 2>&1; then
  $SUDO systemctl disable --now nginx consul supervisor docker docker.socket >/dev/null 2>&1 || true
fi
# Where there is no systemd, docker.io's and supervisor's packages start a
# daemon of their own (docker.io with its own address range and firewall
# rules): stop each, by its init script, right after installing it; the
# project's scripts start their own.
if [[ " ${missing[*]} " == *" dockerd "* ]] && [ -x /etc/init.d/docker ]; then
  $SUDO /etc/init.d/docker stop >/dev/null 2>&1 || true
fi
if [[ " ${missing[*]} " == *" supervisord "* ]] && [ -x /etc/init.d/supervisor ]; then
  $SUDO /etc/init.d/supervisor stop >/dev/null 2>&1 || true
fi
# Debian's package starts its own NGINX on port 80 where there is no systemd;
# stop that one (by its package pid file) and no other.
if [ -f /run/nginx.pid ]; then $SUDO nginx -s quit >/dev/null 2>&1 || true; fi
log "installed: $(nginx -v 2>&1) / $(consul version | sed -n 1p) / $(chromium --version 2>/dev/null)"
