#!/usr/bin/env bash
# make run's service: migrate, seed, then gunicorn on PORT (4000), in the foreground.
# With PGHOST unset, make run starts this under the embedded PostgreSQL (core/db/embedded.py);
# with AMQPHOST set, the event worker runs beside gunicorn and stops with it.
set -euo pipefail

PYTHON=.venv/bin/python
WORKER_LOG=var/celery-worker.log
# The event worker's command line, as the Makefile declares it (make worker runs the same).
read -ra worker_command <<< "${WORKER:?set WORKER to the event worker command (the Makefile does)}"

"${PYTHON}" manage.py migrate --no-input
"${PYTHON}" manage.py seed
echo "messenger: serving on http://localhost:${PORT:-4000} (Ctrl+C to stop)"
if [ -z "${AMQPHOST:-}" ]; then
  exec .venv/bin/gunicorn -c messenger/gunicorn_conf.py messenger.wsgi
fi
mkdir -p "$(dirname "${WORKER_LOG}")"
echo "messenger: event worker (${WORKER}) logging to ${WORKER_LOG}"
"${worker_command[@]}" >> "${WORKER_LOG}" 2>&1 &
worker=$!
trap 'kill "${worker}" 2>/dev/null; wait "${worker}"' EXIT
.venv/bin/gunicorn -c messenger/gunicorn_conf.py messenger.wsgi
