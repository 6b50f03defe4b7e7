#!/usr/bin/env bash
# Builds stand-ins for official images from Debian's packages, for machines
# where no image registry answers, each tagged with the official name:
#
#   tests/docker/stand-ins/build.sh python:3.11-slim-bookworm postgres:15.1 ...
#
# The folder beside this script named for an image (python, nginx, postgres,
# rabbitmq, consul) holds its Dockerfile, whose header says what it imitates
# and how it differs. All of them start from debian:bookworm, made here first
# with debootstrap from this machine's own Debian mirror (read from its apt
# sources at build time) when it is not there.
#
# A stand-in that already carries the label of its current recipe is kept (a
# CI machine may keep its images between runs); STAND_INS_REBUILD=1 builds
# every one again (a cold build).
set -euo pipefail

# This configuration requires a new commit to change
SUITE=bookworm
BASE_IMAGE=debian:bookworm
LABEL=org.messenger.stand-in
# Extra CA certificates update-ca-certificates installs, and pip's settings.
LOCAL_CA_DIR=/usr/local/share/ca-certificates
DEBIAN_SOURCES=/etc/apt/sources.list.d/debian.sources

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# replace_image (the project's way of building an image), log, die.
# shellcheck source=SCRIPTDIR/../../../infrastructure/lib.sh
source "${HERE}/../../../infrastructure/lib.sh"
SCRIPT_NAME=stand-ins  # log's prefix
REBUILD="${STAND_INS_REBUILD:-0}"

# The folder of the stand-in for an image name (repository without its tag).
recipe_for() {
  case "${1%%:*}" in
    python) echo python ;;
    nginx) echo nginx ;;
    postgres) echo postgres ;;
    rabbitmq) echo rabbitmq ;;
    hashicorp/consul) echo consul ;;
    *) return 1 ;;
  esac
}

digest_of() {  # files or folders...: one hash of their names and contents
  find "$@" -type f -print0 | sort -z | xargs -0 sha256sum | sed "s|${HERE}/||" | sha256sum | cut -c1-16
}

label_of() {  # image
  docker image inspect --format "{{ index .Config.Labels \"${LABEL}\" }}" "$1" 2>/dev/null || true
}

mirror_uri() {
  # The first Debian (non-security) URI this machine's apt uses.
  local uri=""
  if [ -f "${DEBIAN_SOURCES}" ]; then
    uri="$(awk '/^URIs:/ {print $2}' "${DEBIAN_SOURCES}" | grep -v security | sed -n 1p || true)"
  fi
  if [ -z "${uri}" ] && [ -f /etc/apt/sources.list ]; then
    uri="$(awk '/^deb / && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list || true)"
  fi
  [ -n "${uri}" ] || die "cannot find this machine's Debian mirror in its apt sources"
  printf '%s' "${uri}"
}

build_base() {
  local digest=$1 root
  command -v debootstrap >/dev/null 2>&1 || die "debootstrap not found: run 'make system-deps'"
  root="$(mktemp -d)"
  # shellcheck disable=SC2064  # the folder is fixed now
  trap "rm -rf '${root}'" RETURN
  log "${BASE_IMAGE}: debootstrap --variant=minbase ${SUITE} from this machine's mirror"
  debootstrap --variant=minbase "${SUITE}" "${root}" "$(mirror_uri)" >"${root}.log" 2>&1 ||
    { tail -n 20 "${root}.log" >&2; rm -f "${root}.log"; die "debootstrap failed"; }
  rm -f "${root}.log"
  # As in Docker's own Debian (-slim) images: no service starts while a
  # package installs (a build on the host's network would otherwise start one
  # there), apt keeps no package files or caches, and packages install without
  # their documentation, manual pages and translations.
  printf '#!/bin/sh\nexit 101\n' >"${root}/usr/sbin/policy-rc.d"
  chmod 0755 "${root}/usr/sbin/policy-rc.d"
  cat >"${root}/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
  printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
    'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' 'path-exclude /usr/share/locale/*' \
    'path-exclude /usr/share/lintian/*' >"${root}/etc/dpkg/dpkg.cfg.d/docker-slim"
  find "${root}/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  rm -rf "${root}"/usr/share/man/* "${root}"/usr/share/info/* "${root}"/usr/share/locale/* \
    "${root}"/var/cache/apt/*.bin "${root}"/var/cache/apt/archives/*.deb "${root}"/var/lib/apt/lists/*
  tar -C "${root}" -c . | docker import --change "LABEL ${LABEL}=${digest}" - "${BASE_IMAGE}" >/dev/null
  log "${BASE_IMAGE}: imported"
}

# The build context of the python stand-in gets this machine's extra CA
# certificates and its pip index settings (only those that name a URL; paths
# of this machine mean nothing in a container).
add_machine_files() {  # context
  mkdir -p "$1/machine/ca-certificates"
  if compgen -G "${LOCAL_CA_DIR}/*.crt" >/dev/null; then
    cp "${LOCAL_CA_DIR}"/*.crt "$1/machine/ca-certificates/"
  fi
  {
    echo "[global]"
    echo "cert = /etc/ssl/certs/ca-certificates.crt"
    local key env_name value
    for key in index-url extra-index-url trusted-host; do
      # The environment's PIP_INDEX_URL (...) wins over pip's files, as for pip itself.
      env_name="PIP_$(printf '%s' "${key}" | tr 'a-z-' 'A-Z_')"
      value="${!env_name:-$(python3 -m pip config get "global.${key}" 2>/dev/null || true)}"
      [ "${key}" = trusted-host ] || value="$(tr ' ' '\n' <<<"${value}" | grep -E '^https?://' | tr '\n' ' ' || true)"
      [ -z "${value// /}" ] || echo "${key} = ${value% }"
    done
  } >"$1/machine/pip.conf"
}

# The base's recipe is build_base itself: a change elsewhere in this script rebuilds nothing.
BASE_DIGEST="$(declare -f build_base | sha256sum | cut -c1-16)"

[ "$#" -gt 0 ] || die "usage: $0 IMAGE..."
if [ "${REBUILD}" = 1 ] || [ "$(label_of "${BASE_IMAGE}")" != "${BASE_DIGEST}" ]; then
  if docker image inspect "${BASE_IMAGE}" >/dev/null 2>&1 && [ -z "$(label_of "${BASE_IMAGE}")" ]; then
    log "${BASE_IMAGE}: the official image is here; building on it"
  else
    build_base "${BASE_DIGEST}"
  fi
fi

for image in "$@"; do
  recipe="$(recipe_for "${image}")" || die "no stand-in for ${image}"
  context="$(mktemp -d)"
  cp -a "${HERE}/${recipe}/." "${context}/"
  [ "${recipe}" != python ] || add_machine_files "${context}"
  digest="$(cd "${context}" && digest_of . | cut -c1-8)-${BASE_DIGEST:0:8}"
  if [ "${REBUILD}" != 1 ] && [ "$(label_of "${image}")" = "${digest}" ]; then
    log "${image}: stand-in is current"
    rm -rf "${context}"
    continue
  fi
  log "${image}: building the stand-in (${recipe}/Dockerfile)"
  # Only the host's network reaches Debian's mirror (the engine gives
  # containers no route out).
  if ! replace_image "${image}" --build-arg "STAND_IN_DIGEST=${digest}" "${context}" >"${context}.log" 2>&1; then
    tail -n 30 "${context}.log" >&2
    rm -rf "${context}" "${context}.log"
    die "building the ${image} stand-in failed"
  fi
  rm -rf "${context}" "${context}.log"
  log "${image}: stand-in built"
done
