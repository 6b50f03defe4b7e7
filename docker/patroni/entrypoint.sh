#!/bin/bash
# A Patroni member (docker/patroni/Dockerfile): its configuration, written from
# the environment at every start, then Patroni, as the postgres user. Patroni
# starts PostgreSQL, makes it the leader or a replica of the leader it finds in
# Consul, and keeps it so.
#
# The member's name is the host's, its address the one its name resolves to (a
# host-network task; every host's hosts file names every host). Consul is the
# host's own agent on 127.0.0.1.
set -euo pipefail

: "${PATRONI_SCOPE:?the cluster name, also its service in Consul}"
: "${POSTGRES_USER:?the superuser}" "${POSTGRES_PASSWORD:?the superuser password}"
: "${REPLICATION_USER:?the role standbys stream as}" "${REPLICATION_PASSWORD:?its password}"
: "${POSTGRES_PORT:?the port PostgreSQL listens on}" "${CONSUL_HTTP_PORT:?the host Consul agent HTTP port}"
: "${HOSTS_SUBNET:?the hosts network (CIDR) its members and clients connect from}"
DATA_DIR=/var/lib/postgresql/data/pgdata
CONFIG=/tmp/patroni.yml
LOCK="$(dirname "${DATA_DIR}")/.member.lock"

if [ "$(id -u)" = 0 ]; then
  # A fresh volume belongs to root: hand it to postgres, then start again as postgres.
  mkdir -p "${DATA_DIR}"
  touch "${LOCK}"
  chown postgres:postgres "$(dirname "${DATA_DIR}")" "${DATA_DIR}" "${LOCK}"
  chmod 700 "${DATA_DIR}"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

# One member per data directory. The engine may start a task's replacement on
# the same host, so on the same volume, before the task it replaces has stopped
# (seen after a node came back: 8 s of both, and the new member's pg_rewind read
# a WAL segment the old one was still writing). PostgreSQL's own interlock
# (postmaster.pid, its shared memory) cannot see across containers' PID and IPC
# namespaces; this lock on the volume can. Patroni holds it for its whole life
# (the descriptor survives the exec; PostgreSQL, which Patroni stops before it
# exits, does not inherit it), and the next member takes it once that one has gone.
exec 9>>"${LOCK}"
if ! flock --nonblock 9; then
  echo "patroni: another member still runs on this volume; waiting until it stops" >&2
  flock 9
fi

NAME="$(hostname)"
ADDRESS="$(getent hosts "${NAME}" | awk '{ print $1; exit }')"
[ -n "${ADDRESS}" ] || { echo "patroni: ${NAME} does not resolve to an address" >&2; exit 1; }

# Timings: Consul's raft_multiplier 1 and these let a lost leader be replaced in
# about 10 s (30-35 s with the defaults). synchronous_mode_strict: no commit is
# acknowledged before a standby has it, even with none left (writes wait).
cat >"${CONFIG}" <<YAML
scope: ${PATRONI_SCOPE}
name: ${NAME}
restapi:
  listen: 0.0.0.0:8008
  connect_address: ${ADDRESS}:8008
consul:
  host: 127.0.0.1:${CONSUL_HTTP_PORT}
  register_service: true
  checks: [serfHealth]
bootstrap:
  dcs:
    ttl: 20
    loop_wait: 2
    retry_timeout: 5
    maximum_lag_on_failover: 1048576
    synchronous_mode: true
    synchronous_mode_strict: true
    synchronous_node_count: 1
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_log_hints: "on"
        max_connections: 200
        max_wal_senders: 10
        max_replication_slots: 10
        hot_standby: "on"
        # A standby retries its stream this soon (5 s by default): after a failover the
        # remaining standby follows the new leader, and strict mode's commits wait for it.
        wal_retrieve_retry_interval: 1s
  initdb:
    - encoding: UTF8
    - data-checksums
postgresql:
  listen: 0.0.0.0:${POSTGRES_PORT}
  connect_address: ${ADDRESS}:${POSTGRES_PORT}
  data_dir: ${DATA_DIR}
  bin_dir: /usr/lib/postgresql/15/bin
  # A member whose pg_rewind fails is cloned anew from the leader, instead of
  # starting on data that can never follow it (it then waits for WAL forever,
  # "starting" in patronictl). Seen: a leader whose link was cut, back as a
  # replica, failed its rewind on a WAL segment read short. Its data is nothing
  # to keep: with synchronous_mode_strict every acknowledged commit is on the
  # new leader. The same for a diverged timeline pg_rewind cannot mend.
  remove_data_directory_on_rewind_failure: true
  remove_data_directory_on_diverged_timelines: true
  pgpass: /tmp/pgpass
  authentication:
    superuser:
      username: "${POSTGRES_USER}"
      password: "${POSTGRES_PASSWORD}"
    replication:
      username: "${REPLICATION_USER}"
      password: "${REPLICATION_PASSWORD}"
  parameters:
    unix_socket_directories: /var/run/postgresql
  pg_hba:
    - local all all trust
    - host replication ${REPLICATION_USER} ${HOSTS_SUBNET} scram-sha-256
    - host replication ${REPLICATION_USER} 127.0.0.1/32 scram-sha-256
    - host all all ${HOSTS_SUBNET} scram-sha-256
    - host all all 127.0.0.1/32 scram-sha-256
YAML
chmod 600 "${CONFIG}"
exec patroni "${CONFIG}"
