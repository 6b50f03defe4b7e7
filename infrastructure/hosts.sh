#!/usr/bin/env bash
# Several hosts on this machine, each with a Docker engine of its own, in one swarm.
#
# A host is a network namespace (messenger-host-1 .. messenger-host-N) with its
# own address on one bridge, its own host name, and its own dockerd (data root,
# exec root, socket and cgroup parent of its own). The N engines form one swarm
# of N managers (a raft quorum); this machine's own engine (the edge, where
# localhost:8085 is) joins it as a worker for the load balancer and a Consul
# client agent. What runs where is the swarm's business: infrastructure/swarm.sh
# deploys the stack onto it.
#
#   ./infrastructure/hosts.sh up N          # bridge, hosts, engines, swarm, images (safe to run again: starts what is missing)
#   ./infrastructure/hosts.sh down          # leave the swarm; every container and volume, engine, host and the bridge removed
#   ./infrastructure/hosts.sh list          # the hosts, one name per line
#   ./infrastructure/hosts.sh docker HOST ARGS...   # the docker client, on HOST's engine
#   ./infrastructure/hosts.sh images        # every image the stack uses, into each engine that lacks it
#   ./infrastructure/hosts.sh address HOST  # its address (and `subnet`: the hosts' network)
#   ./infrastructure/hosts.sh kill HOST     # a crash: SIGKILL the host's engine and every process it ran
#   ./infrastructure/hosts.sh boot HOST     # start HOST's engine again; it rejoins the swarm by itself
#   ./infrastructure/hosts.sh cut HOST      # take HOST's link down (no process is touched)
#   ./infrastructure/hosts.sh restore HOST  # bring HOST's link up again
#
# Addresses: the project's range is 10.77.0.0/16; this bridge is 10.77.1.0/24,
# the edge 10.77.1.1 and host N 10.77.1.(10+N); the hosts' engines take their
# own networks from 10.77.128.0/18 and the swarm's overlay networks come from
# 10.77.192.0/18. Nothing else is addressed.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

# This configuration requires a new commit to change
BRIDGE=messenger-br0
HOST_PREFIX=messenger-host-
SUBNET_PREFIX=10.77.1
HOSTS_SUBNET="${SUBNET_PREFIX}.0/24"
EDGE_ADDRESS="${SUBNET_PREFIX}.1"
PREFIX_LENGTH=24
FIRST_HOST_OCTET=10  # host N is ${SUBNET_PREFIX}.(10+N)
MAX_HOSTS=9
ENGINE_ADDRESS_POOL=10.77.128.0/18
SWARM_ADDRESS_POOL=10.77.192.0/18
# A manager that hears nothing from a node for a few heartbeats marks it down and
# reschedules its tasks. Docker's 5 s: with 1 s, the edge was marked down while the
# managers elected a new leader on a loaded machine, and its load balancer task was
# replaced (connections to :8085 refused meanwhile). Traffic does not wait for it:
# Consul's checks take a lost instance out of NGINX's list within seconds.
DISPATCHER_HEARTBEAT=5s
ENGINE_START_SECONDS=60
# How long `down` waits for an engine to have removed every container.
ENGINE_EMPTY_SECONDS=60
# The cgroup v1 hierarchies dockerd needs: `ip netns exec` remounts /sys, which
# leaves /sys/fs/cgroup empty inside the namespace (ENVIRONMENT.md).
CGROUP_HIERARCHIES="cpu cpuacct cpuset memory devices freezer blkio pids"
HOSTS_STATE_DIR="${MESSENGER_STATE_DIR}/hosts"
# Sockets and an engine's exec root want short paths.
RUN_DIR=/run/messenger-hosts

usage() {
  sed -n 's/^#   \(.\/infrastructure\/hosts.sh .*\)/\1/p' "$0" >&2
  exit 2
}

hosts() { ip netns list | awk -v prefix="${HOST_PREFIX}" 'index($1, prefix) == 1 { print $1 }' | sort -V; }
host_number() { printf '%s' "${1#"${HOST_PREFIX}"}"; }
host_link() { printf 'mh-%s' "$(host_number "$1")"; }  # the bridge's end of the host's link
host_ip() { printf '%s.%s' "${SUBNET_PREFIX}" "$((FIRST_HOST_OCTET + $(host_number "$1")))"; }
engine_socket() { printf '%s/%s/docker.sock' "${RUN_DIR}" "$1"; }
on_host() {  # HOST ARGS...: the docker client on HOST's engine
  local host=$1
  shift
  docker -H "unix://$(engine_socket "${host}")" "$@"
}
# `version`, not `info`: info reports the swarm too, and a manager whose swarm is
# electing a leader (a peer just left) can take longer than the timeout to give it.
engine_answers() { timeout 10 docker -H "unix://$(engine_socket "$1")" version >/dev/null 2>&1; }

wait_for_engine() {  # host data-folder
  local deadline=$((SECONDS + ENGINE_START_SECONDS))
  until engine_answers "$1"; do
    [ "${SECONDS}" -lt "${deadline}" ] || die "$1: its engine did not answer within ${ENGINE_START_SECONDS}s (log: $2/dockerd.log)"
    sleep 0.5
  done
}

require_host() {
  hosts | grep -x -- "$1" >/dev/null || die "no host '$1' (known: $(hosts | tr '\n' ' '))"
}

make_host() {  # HOST: its namespace, link and address, and a hosts file naming every host
  local host=$1 link
  link="$(host_link "${host}")"
  ip netns add "${host}"
  ip link add "${link}" type veth peer name eth0 netns "${host}"
  ip link set "${link}" master "${BRIDGE}" up
  ip -n "${host}" addr add "$(host_ip "${host}")/${PREFIX_LENGTH}" dev eth0
  ip -n "${host}" link set eth0 up
  ip -n "${host}" link set lo up
  log "${host}: $(host_ip "${host}")"
}

# `ip netns exec` shows a process /etc/netns/HOST/hosts as /etc/hosts: every host
# resolves every host's name (an instance finds its own node's Consul agent by
# the node's name), and host-network containers get the same file.
write_hosts_files() {
  local host other
  for host in $(hosts); do
    mkdir -p "/etc/netns/${host}"
    {
      printf '127.0.0.1\tlocalhost\n'
      for other in $(hosts); do printf '%s\t%s\n' "$(host_ip "${other}")" "${other}"; done
    } >"/etc/netns/${host}/hosts"
  done
}

# boot HOST: start the host's engine (its "machine" booting). Idempotent.
boot() {
  local host=$1 data run
  if engine_answers "${host}"; then return 0; fi
  data="${HOSTS_STATE_DIR}/${host}"
  run="${RUN_DIR}/${host}"
  # An engine that runs but is slow to answer is waited for, never started twice:
  # a second dockerd on its data root fails, and taking its socket would leave
  # the first one unreachable.
  local pid
  pid="$(cat "${run}/dockerd.pid" 2>/dev/null || true)"
  if [ -n "${pid}" ] && [ "$(cat "/proc/${pid}/comm" 2>/dev/null)" = dockerd ] &&
    [ "$(ip netns identify "${pid}" 2>/dev/null)" = "${host}" ]; then
    wait_for_engine "${host}" "${data}"
    return 0
  fi
  mkdir -p "${data}/docker" "${run}"
  rm -f "${run}/docker.sock" "${run}/dockerd.pid"
  # dockerd trusts containerd's pid file; after a crash, that pid may belong to
  # another process by now, and dockerd would wait for it forever.
  local containerd_pid
  containerd_pid="$(cat "${run}/containerd/containerd.pid" 2>/dev/null || true)"
  if [ -n "${containerd_pid}" ] && { [ "$(cat "/proc/${containerd_pid}/comm" 2>/dev/null)" != containerd ] ||
    [ "$(ip netns identify "${containerd_pid}" 2>/dev/null)" != "${host}" ]; }; then
    rm -f "${run}/containerd/containerd.pid"
  fi
  # A mount namespace of its own (ip netns exec makes one), with the cgroup
  # hierarchies mounted again, and a UTS namespace for the host's name.
  # shellcheck disable=SC2016  # expanded by the inner shell
  setsid ip netns exec "${host}" unshare --uts sh -c '
    set -e
    hostname "$1"; shift
    mount -t tmpfs cgroup_root /sys/fs/cgroup
    for hierarchy in $1; do
      mkdir -p "/sys/fs/cgroup/${hierarchy}"
      mount -t cgroup -o "${hierarchy}" cgroup "/sys/fs/cgroup/${hierarchy}"
    done
    shift
    mkdir -p /sys/fs/cgroup/systemd /sys/fs/cgroup/unified
    mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
    mount -t cgroup2 none /sys/fs/cgroup/unified
    exec dockerd "$@"' sh "${host}" "${CGROUP_HIERARCHIES}" \
    --data-root "${data}/docker" --exec-root "${run}" --pidfile "${run}/dockerd.pid" \
    -H "unix://${run}/docker.sock" --cgroup-parent "${host}" \
    --bridge=none --iptables=false --ip-masq=false \
    --default-address-pool "base=${ENGINE_ADDRESS_POOL},size=24" \
    </dev/null >>"${data}/dockerd.log" 2>&1 &
  wait_for_engine "${host}" "${data}"
  log "${host}: engine up ($(engine_socket "${host}"))"
}

# kill HOST: what a crash does. The engine first, so it restarts nothing, then
# every process of the namespace (containers outlive a killed dockerd).
kill_host() {
  local host=$1 pids
  mapfile -t pids < <(ip netns pids "${host}")
  [ "${#pids[@]}" -eq 0 ] || kill -KILL "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 1 100); do
    mapfile -t pids < <(ip netns pids "${host}")
    [ "${#pids[@]}" -gt 0 ] || return 0
    kill -KILL "${pids[@]}" 2>/dev/null || true
    sleep 0.1
  done
  die "${host}: ${#pids[@]} process(es) survive SIGKILL"
}

swarm_state() { on_host "$1" info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null || echo unknown; }

# The first host's engine starts the swarm; the others join as managers; the
# edge joins as a worker. A host that is already a member is left alone.
form_swarm() {
  local first=$1 host token_manager token_worker edge_state
  if [ "$(swarm_state "${first}")" != active ]; then
    on_host "${first}" swarm init --advertise-addr "$(host_ip "${first}")" --listen-addr "$(host_ip "${first}"):2377" \
      --dispatcher-heartbeat "${DISPATCHER_HEARTBEAT}" --default-addr-pool "${SWARM_ADDRESS_POOL}" >/dev/null
    log "swarm started on ${first}"
  fi
  token_manager="$(on_host "${first}" swarm join-token -q manager)"
  token_worker="$(on_host "${first}" swarm join-token -q worker)"
  for host in $(hosts); do
    [ "$(swarm_state "${host}")" != active ] || continue
    on_host "${host}" swarm join --advertise-addr "$(host_ip "${host}")" --listen-addr "$(host_ip "${host}"):2377" \
      --token "${token_manager}" "$(host_ip "${first}"):2377" >/dev/null
    log "${host} joined the swarm as a manager"
  done
  on_host "${first}" node update --label-add messenger.platform=true "${first}" >/dev/null
  # The edge: this machine's engine. A membership left by an earlier swarm is dropped.
  if [ "$(docker info --format '{{.Swarm.NodeAddr}}' 2>/dev/null)" != "${EDGE_ADDRESS}" ] ||
    ! on_host "${first}" node inspect "$(docker info --format '{{.Swarm.NodeID}}')" >/dev/null 2>&1; then
    edge_state="$(docker info --format '{{.Swarm.LocalNodeState}}')"
    [ "${edge_state}" = inactive ] || docker swarm leave --force >/dev/null
    docker swarm join --advertise-addr "${EDGE_ADDRESS}" --listen-addr "${EDGE_ADDRESS}:2377" \
      --token "${token_worker}" "$(host_ip "${first}"):2377" >/dev/null
    log "this machine (the edge) joined the swarm as a worker"
  fi
  on_host "${first}" node update --label-add messenger.edge=true "$(docker info --format '{{.Swarm.NodeID}}')" >/dev/null
}

# Images reach each engine as a registry-less swarm's do: saved from this
# machine's engine (where make docker-images builds them) and loaded where an
# engine lacks that exact image. Saved once, into one archive, and loaded into
# every engine that lacks any of them side by side: host after host, a new
# machine's three engines took 34 s each, 10 s of it saving the same archive again.
images() {
  local host image id missing=() wanted lacking=() union=() archive pids=() failed=() i started=${SECONDS}
  mapfile -t wanted < <(stack_images)
  for host in $(hosts); do
    engine_answers "${host}" || continue
    missing=()
    for image in "${wanted[@]}"; do
      id="$(docker image inspect --format '{{.Id}}' "${image}")"
      if on_host "${host}" image inspect "${id}" >/dev/null 2>&1; then
        on_host "${host}" tag "${id}" "${image}"  # the same image under another name: no need to copy it
      else
        missing+=("${image}")
        [[ " ${union[*]} " == *" ${image} "* ]] || union+=("${image}")
      fi
    done
    [ "${#missing[@]}" -gt 0 ] || continue
    lacking+=("${host}")
    log "${host}: lacks ${missing[*]}"
  done
  [ "${#lacking[@]}" -gt 0 ] || return 0
  mkdir -p "${HOSTS_STATE_DIR}"
  archive="${HOSTS_STATE_DIR}/images.tar"
  # One archive of every image some engine lacks: an engine that has some of them already skips their
  # layers (docker load unpacks only a layer it lacks), which costs less than an archive per engine.
  docker save --output "${archive}" "${union[@]}"
  for host in "${lacking[@]}"; do
    on_host "${host}" load --quiet --input "${archive}" >/dev/null &
    pids+=("$!")
  done
  for i in "${!pids[@]}"; do
    wait "${pids[${i}]}" || failed+=("${lacking[${i}]}")
  done
  rm -f "${archive}"
  [ "${#failed[@]}" -eq 0 ] || die "loading the stack's images failed on ${failed[*]}"
  log "loaded ${union[*]} into ${lacking[*]} in $((SECONDS - started))s"
}

# The images of the stack: the platform's (docker/.env) and the messenger team's.
stack_images() {
  printf '%s\n' "${CONSUL_IMAGE}" "${RABBITMQ_IMAGE}" "${POSTGRES_IMAGE}" "${MESSENGER_IMAGE_REF:-${MESSENGER_IMAGE}:latest}" messenger-lb:latest \
    "${PATRONI_IMAGE}:latest"
}

up() {
  local count=$1 n host
  if ! [[ "${count}" =~ ^[1-9]$ ]] || [ "${count}" -gt "${MAX_HOSTS}" ]; then die "N must be 1..${MAX_HOSTS}, not '${count}'"; fi
  docker_engine_answers || die "this machine's Docker engine does not answer (scripts/ensure-docker.sh start)"
  local image
  for image in $(stack_images); do
    docker image inspect "${image}" >/dev/null 2>&1 || die "no image ${image} on this machine's engine: run 'make docker-images'"
  done
  if ! ip link show "${BRIDGE}" >/dev/null 2>&1; then
    ip link add "${BRIDGE}" type bridge
    ip addr add "${EDGE_ADDRESS}/${PREFIX_LENGTH}" dev "${BRIDGE}"
    log "bridge ${BRIDGE}: ${EDGE_ADDRESS}/${PREFIX_LENGTH} (this machine, the edge)"
  fi
  ip link set "${BRIDGE}" up
  for n in $(seq 1 "${count}"); do
    host="${HOST_PREFIX}${n}"
    hosts | grep -x -- "${host}" >/dev/null || make_host "${host}"
    ip link set "$(host_link "${host}")" up  # a host whose link was cut comes back too
  done
  write_hosts_files
  for host in $(hosts); do boot "${host}"; done
  form_swarm "${HOST_PREFIX}1"
  images
}

# An engine that leaves the swarm removes its task containers itself, in the
# background, and refuses a second removal of one it is removing ("removal of
# container ... is already in progress"): remove whatever is left until nothing is.
remove_containers() {
  local host=$1 containers deadline=$((SECONDS + ENGINE_EMPTY_SECONDS))
  while containers="$(on_host "${host}" ps --all --quiet)" && [ -n "${containers}" ]; do
    if [ "${SECONDS}" -ge "${deadline}" ]; then
      die "${host}: containers left after ${ENGINE_EMPTY_SECONDS}s: ${containers//$'\n'/ }"
    fi
    # shellcheck disable=SC2086  # container ids
    on_host "${host}" rm --force --volumes ${containers} >/dev/null 2>&1 || sleep 0.5  # the engine's removal under way
  done
}

# Each host leaves the swarm and its engine removes every container and volume
# before it stops; the engine's image store stays (a host keeps what it
# pulled), so the next `up` loads nothing it already has. An earlier run's host
# whose processes were all ended (its namespace outlives them) has its engine
# started again to be emptied the same way; one whose engine will not start
# loses its whole data root instead.
down() {
  local host containers
  if [ "$(docker info --format '{{.Swarm.NodeAddr}}' 2>/dev/null)" = "${EDGE_ADDRESS}" ]; then
    docker swarm leave --force >/dev/null && log "this machine left the swarm"
  fi
  rm -f "${HOSTS_STATE_DIR}/images.tar"  # an `images` that was interrupted leaves its archive
  for host in $(hosts); do
    engine_answers "${host}" || (boot "${host}") || true
    if engine_answers "${host}"; then
      on_host "${host}" swarm leave --force >/dev/null 2>&1 || true
      remove_containers "${host}"
      on_host "${host}" volume prune --force >/dev/null
      kill_host "${host}"
    else
      kill_host "${host}"
      rm -rf "${HOSTS_STATE_DIR:?}/${host}"
      log "${host}: its engine would not start: its data removed"
    fi
    # The link first: deleting it removes both of its ends at once, where the
    # kernel would remove them some time after the namespace.
    if ip link show "$(host_link "${host}")" >/dev/null 2>&1; then ip link delete "$(host_link "${host}")"; fi
    ip netns delete "${host}"
    rm -rf "/etc/netns/${host}" "${RUN_DIR:?}/${host}"
    if [ -d "${HOSTS_STATE_DIR}/${host}" ]; then
      log "${host}: removed (its engine's images kept in ${HOSTS_STATE_DIR}/${host})"
    else
      log "${host}: removed"
    fi
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
  images) images ;;
  docker)
    [ "$#" -ge 2 ] || usage
    require_host "$2"
    host=$2
    shift 2
    on_host "${host}" "$@"
    ;;
  kill | boot | cut | restore)
    [ "$#" -eq 2 ] || usage
    require_host "$2"
    case "$1" in
      kill) kill_host "$2"; log "$2: killed (its engine and every process it ran)" ;;
      boot) boot "$2" ;;
      cut) ip link set "$(host_link "$2")" down; log "$2: link $(host_link "$2") down" ;;
      restore) ip link set "$(host_link "$2")" up; log "$2: link $(host_link "$2") up" ;;
    esac
    ;;
  address) [ "$#" -eq 2 ] || usage; host_ip "$2" ;;
  subnet) echo "${HOSTS_SUBNET}" ;;
  *) usage ;;
esac
