#!/usr/bin/env bash
# shellcheck disable=SC2034  # the worker's variables go to start_instance by name
# Starts the event worker: a Celery worker (with its beat sweep) that relays the
# outbox to RabbitMQ's chat_queue. It connects with the application role, as
# the serving instances do, and registers nowhere. Safe to run again: a running
# worker is left as it is. Stop it with
# infrastructure/messenger-stop.sh --service messenger-worker --all.
#
#   CONSUL_HOST=127.0.0.1 CONSUL_PORT=8500 ./infrastructure/messenger-worker-deploy.sh
#
# Docker runtime: a container of the `messenger` image running celery. Local
# runtime: the project's celery; pid, log and environment under
# ${MESSENGER_STATE_DIR:-.state}/messenger-worker/.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

# This configuration requires a new commit to change
APP_ENV=production
WORKER_KIND=messenger-worker
INSTANCE_ID=messenger-worker
# One process: relaying is I/O-bound and ordered per conversation; the outbox
# lock serialises relays anyway. The node name is unique per deploy, so two
# stacks sharing one RabbitMQ never contend for a worker's control queue.
WORKER_NODE="messenger-worker-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')@%h"
INSTANCE_COMMAND=(celery -A messenger worker --beat --loglevel INFO --concurrency 1 --hostname "${WORKER_NODE}")
INSTANCE_READY="log:ready."
# The image's health check asks /health of a serving instance; the worker serves no HTTP.
INSTANCE_DOCKER_ARGS=(--no-healthcheck)

# The database's name, unless the caller names another (the test suite does).
PGDATABASE="${MESSENGER_DB_NAME}"

select_runtime
require_consul_location

if instance_running "${WORKER_KIND}" "${INSTANCE_ID}"; then
  log "${INSTANCE_ID} is already running"
  echo "${INSTANCE_ID}"
  exit 0
fi

# Postgres and RabbitMQ configuration by pulling information from the system
# (Consul KV): the application's role.
read_connection_details "${KV_DB_APPLICATION_USER}" "${KV_DB_APPLICATION_PASSWORD}"

start_instance "${WORKER_KIND}" "${INSTANCE_ID}" APP_ENV PGUSER PGPORT PGHOST PGPASSWORD PGDATABASE AMQPHOST AMQPPORT
echo "${INSTANCE_ID}"
