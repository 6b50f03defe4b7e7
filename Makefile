# The commands people type. Every target installs what it needs first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# make test's pytest-xdist workers. The tests holding the machine's fixed-name resources (engine, namespaces, a whole
# stack) run one after the other in one group (conftest.py); the rest spread. Most process tests wait on processes
# rather than compute, so three workers pay even on two cores. The suite ends with its 15 slowest steps (--durations).
PYTEST_WORKERS ?= 3
# The event worker: relays the outbox to RabbitMQ, with beat's periodic sweep embedded.
WORKER := $(VENV)/bin/celery -A messenger worker --beat --loglevel INFO

.PHONY: help venv system-deps run worker test docs bench docker-images up down ps scale reset-db deploy

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(STAMP): requirements/base.txt requirements/production.txt requirements/dev.txt
	@test -n "$(PYTHON)" || { echo "python3.11 not found: install Python 3.11" >&2; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check -r requirements/dev.txt
	@touch $@

venv: $(STAMP) ## Create .venv and install the Python packages

system-deps: ## Install NGINX, Consul, Chromium, the benchmark tools and Docker (Debian packages)
	@bash scripts/install-system-deps.sh

run: $(STAMP) ## Serve on port 4000 (an embedded PostgreSQL under var/ unless PGHOST is set; no broker, no Consul); with AMQPHOST set, the event worker too
	@export WORKER="$(WORKER)"; if [ -n "$${PGHOST:-}" ]; then exec bash scripts/run.sh; fi; \
	exec $(PY) -m core.db.embedded -- bash scripts/run.sh

worker: $(STAMP) ## Run the event worker (Celery, with its beat sweep) in the foreground; needs AMQPHOST
	@test -n "$${AMQPHOST:-}" || { echo "worker: set AMQPHOST (and AMQPPORT, AMQPUSER, ...) to a RabbitMQ first" >&2; exit 1; }
	@mkdir -p var
	exec $(WORKER)

# A Docker engine started for the suite is stopped after it, pass or fail.
test: lint system-deps ## Run the lint and type checks, then the whole suite against the real services and a real Docker engine
	@bash scripts/ensure-services.sh
	@bash scripts/ensure-docker.sh run $(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadgroup --durations=15 $(PYTEST_ARGS)

.PHONY: lint
lint: $(STAMP) ## ruff (lint, and the format check) and mypy over the tree; settings in pyproject.toml
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

docs: $(STAMP) ## Regenerate docs/configuration.md's table and .env.example from the schema
	$(PY) scripts/render-config-docs.py

# Each part runs whatever the one before it found; the exit status is 1 if any missed a target.
bench: $(STAMP) ## Run every benchmark scenario against the running stack (make up) and pgbench; print one table, then the live scenarios, then one instance beside the reference service (REFERENCE_URL)
	@status=0; \
	$(PY) bench/run.py || status=1; \
	$(PY) bench/live.py || status=1; \
	$(PY) bench/reference.py || status=1; \
	exit $$status

# --- the whole topology (infrastructure/stack.sh) ---------------------------------
# HOSTS=3 (up, down, ps, scale, reset-db, deploy): the same system over three
# hosts of this machine, each with its own Docker engine, deployed on Docker
# Swarm (infrastructure/swarm.sh; docs/hosts.md). stack.sh reads it from the
# environment, where make puts a variable given on its command line.
STACK := infrastructure/stack.sh
# With MESSENGER_RUNTIME=docker, an engine must answer: started when none does.
ENSURE_DOCKER := if [ "$${MESSENGER_RUNTIME:-}" = docker ]; then bash scripts/ensure-docker.sh start; fi

docker-images: system-deps ## Build every image the Docker topology uses (stand-ins for official ones where no registry answers)
	@bash scripts/ensure-docker.sh start
	@bash scripts/build-docker-images.sh

up: $(STAMP) system-deps ## Bring up the whole system: Consul, RabbitMQ, PostgreSQL, migrator job, 3 instances, worker, NGINX on 8085 (HOSTS=3: over three hosts, on Docker Swarm)
	@$(ENSURE_DOCKER)
	@bash $(STACK) up

down: ## Stop everything `make up` started, gracefully
	@bash $(STACK) down

ps: ## List the pieces of the running system and their health
	@bash $(STACK) ps

scale: $(STAMP) ## Run N serving instances (make scale N=5); they take traffic without a restart
	@test -n "$(N)" || { echo "usage: make scale N=5" >&2; exit 2; }
	@bash $(STACK) scale $(N)

reset-db: $(STAMP) ## Empty the stack's database and seed it again, through the migrator job
	@bash $(STACK) reset-db

deploy: $(STAMP) ## Roll a new messenger image out over the swarm (HOSTS=3), one instance at a time, rolled back if unhealthy; IMAGE=name:tag, or the image built from this tree
	@test -n "$${HOSTS:-}" || { echo "deploy: rolling updates run on the swarm: make deploy HOSTS=3 (make up HOSTS=3 first)" >&2; exit 2; }
	@bash $(STACK) deploy $(IMAGE)
