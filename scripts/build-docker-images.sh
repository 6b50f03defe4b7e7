#!/usr/bin/env bash
# Builds every image the Docker topology uses (`make docker-images`): the
# messenger image (docker/Dockerfile) and the load balancer
# (load-balancer/Dockerfile), and makes sure the platform's images (docker/.env)
# are on this engine.
#
# Base and platform images come from the registry (`docker pull`). Where no
# registry answers, stand-ins built from Debian's packages take their names
# (tests/docker/stand-ins/, each saying what it imitates and how it differs),
# so the project's Dockerfiles build unmodified.
#
# LB_RENDERER chooses the load balancer's renderer: consul-template (the
# default, downloaded from HashiCorp's release site) or watcher (the project's
# upstream_watcher.py). Unset on a machine where no registry answers, it is
# the watcher: such a machine does not reach HashiCorp's release site either.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=SCRIPTDIR/../infrastructure/lib.sh
source "${REPO_ROOT}/infrastructure/lib.sh"

# This configuration requires a new commit to change
LB_IMAGE=messenger-lb
STAND_INS="${REPO_ROOT}/tests/docker/stand-ins/build.sh"
DOCKERFILES=("${REPO_ROOT}/docker/Dockerfile" "${REPO_ROOT}/load-balancer/Dockerfile" "${REPO_ROOT}/docker/patroni/Dockerfile")

docker_engine_answers || die "no Docker engine answers 'docker info' (scripts/ensure-docker.sh start starts one)"

# The images the Dockerfiles build FROM (other than their own stages), then the platform's.
# A base named by a build argument (patroni's: POSTGRES_IMAGE) is among the platform's images below.
mapfile -t BASES < <(awk 'toupper($1) == "FROM" && $2 !~ /\$/ { print $2 }' "${DOCKERFILES[@]}" | sort -u)
NEEDED=("${BASES[@]}" "${CONSUL_IMAGE}" "${RABBITMQ_IMAGE}" "${POSTGRES_IMAGE}")

stand_in_label() {  # image: the stand-in label it carries, if any
  docker image inspect --format '{{ index .Config.Labels "org.messenger.stand-in" }}' "$1" 2>/dev/null || true
}

STAND_IN=()
for image in "${NEEDED[@]}"; do
  if docker image inspect "${image}" >/dev/null 2>&1 && [ -z "$(stand_in_label "${image}")" ]; then
    continue  # the official image, pulled before
  fi
  if [ -z "$(stand_in_label "${image}")" ] && docker pull --quiet "${image}" >/dev/null 2>&1; then
    log "${image}: pulled"
    continue
  fi
  STAND_IN+=("${image}")
done
if [ "${#STAND_IN[@]}" -gt 0 ]; then
  log "no registry gives ${STAND_IN[*]}: using stand-ins built from Debian's packages"
  bash "${STAND_INS}" "${STAND_IN[@]}"
  LB_RENDERER="${LB_RENDERER:-watcher}"
fi
LB_RENDERER="${LB_RENDERER:-consul-template}"

build() {  # tag, docker build arguments...
  local tag=$1
  shift
  log "${tag}: building"
  replace_image "${tag}" --quiet "$@" >/dev/null
  log "${tag}: $(docker image inspect --format '{{.Size}}' "${tag}" | awk '{ printf "%.0f MB", $1 / 1e6 }')"
}
build "${MESSENGER_IMAGE}" -f "${REPO_ROOT}/docker/Dockerfile" "${REPO_ROOT}"
build "${LB_IMAGE}" --build-arg "LB_RENDERER=${LB_RENDERER}" "${REPO_ROOT}/load-balancer"
build "${PATRONI_IMAGE}" --build-arg "POSTGRES_IMAGE=${POSTGRES_IMAGE}" -f "${REPO_ROOT}/docker/patroni/Dockerfile" "${REPO_ROOT}"
log "images ready (load balancer renderer: ${LB_RENDERER})"
