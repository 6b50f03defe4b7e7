"""Django settings, derived entirely from the configuration schema.

Every value an operator can change comes from `core.config` (the schema);
what is left here is how this codebase is wired, which needs a commit to change.
"""

from __future__ import annotations

import math
import secrets
from pathlib import Path
from urllib.parse import quote

from kombu import Exchange, Queue

from core import config as config_schema
from core.db import embedded
from core.logging import logging_config

BASE_DIR = Path(__file__).resolve().parent.parent

CONFIG = config_schema.load()
APP_ENV = CONFIG.environment

SECRET_KEY = CONFIG.SECRET_KEY or secrets.token_urlsafe(50)
DEBUG = CONFIG.DEBUG
ALLOWED_HOSTS = CONFIG.ALLOWED_HOSTS

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and Redoc assets, served locally (no CDN)
    "core",
    "discovery",
    "outbox",
    "conversations.apps.ConversationsConfig",
]

MIDDLEWARE = [
    # Outermost, so the log line and the metrics also cover refusals (413) and errors.
    "core.http.observability.RequestObservabilityMiddleware",
    "core.db.deadline.DatabaseDeadlineMiddleware",
    "core.http.body_limit.BodyLimitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.middleware.common.CommonMiddleware",
]

ROOT_URLCONF = "messenger.urls"
WSGI_APPLICATION = "messenger.wsgi.application"
APPEND_SLASH = False  # the contract's paths have no trailing slash and never redirect

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]

# --- database --------------------------------------------------------------
# PGHOST unset: the embedded PostgreSQL that `make run` starts under DATA_DIR
# (core/db/embedded.py), reached on its Unix socket.
DATA_DIR = (BASE_DIR / CONFIG.DATA_DIR).resolve()
DATABASES = {
    "default": {
        # Django's backend with a cheaper per-request health check (core/db/postgresql).
        "ENGINE": "core.db.postgresql",
        "HOST": CONFIG.PGHOST or embedded.socket_dir(DATA_DIR),
        "PORT": CONFIG.PGPORT,
        "USER": CONFIG.PGUSER,
        "PASSWORD": CONFIG.PGPASSWORD or "",
        "NAME": CONFIG.PGDATABASE,
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": {
            "application_name": "messenger",
            # A lost database must fail requests quickly (503), not hang them:
            # libpq's connect timeout counts whole seconds, 2 at least.
            "connect_timeout": max(2, math.ceil(CONFIG.PG_CONNECT_TIMEOUT)),
            "options": f"-c statement_timeout={int(CONFIG.PG_STATEMENT_TIMEOUT * 1000)}",
            # The hot requests' statements (core.db.pg) are prepared on
            # first use; Django's own client-side-bound queries never are.
            "prepare_threshold": 0,
            "target_session_attrs": CONFIG.PGTARGETSESSIONATTRS,
            # A peer that vanishes without closing the connection (a partition)
            # is detected by TCP keepalives and the unacknowledged-data timeout.
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 2,
            "keepalives_count": 3,
            "tcp_user_timeout": 15000,
        },
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# A request still waiting on PostgreSQL this long has its connection cut (a hung
# server or a partition that the two timeouts cannot see): core.db.deadline.
DATABASE_REQUEST_DEADLINE = (
    CONFIG.PG_STATEMENT_TIMEOUT + max(2, math.ceil(CONFIG.PG_CONNECT_TIMEOUT)) + 1
    if CONFIG.PGHOST and CONFIG.PG_STATEMENT_TIMEOUT
    else None
)

# --- events: Celery over RabbitMQ (unset AMQPHOST: no broker) ---------------
# One broker for Celery's own tasks and for the `chat_queue` events it relays.
# Several hosts (a cluster's nodes) are kombu's failover list: a connection
# that fails moves to the next node.
CELERY_BROKER_URL = (
    ";".join(
        "amqp://{user}:{password}@{host}:{port}/{vhost}".format(
            user=quote(CONFIG.AMQPUSER, safe=""),
            password=quote(CONFIG.AMQPPASSWORD or "", safe=""),
            host=host.strip(),
            port=CONFIG.AMQPPORT,
            vhost=quote(CONFIG.AMQPVHOST, safe=""),
        )
        for host in CONFIG.AMQPHOST.split(",")
    )
    if CONFIG.AMQPHOST
    else None
)
CELERY_TASK_DEFAULT_QUEUE = "messenger.tasks"  # Celery's own queue; `chat_queue` is the notifier's
# On a cluster, Celery's queue is replicated like chat_queue. Celery must know it
# is a quorum queue (it reads the declaration's arguments): quorum queues refuse
# the global prefetch it applies otherwise, and the worker would consume nothing.
CELERY_TASK_QUEUES = (
    Queue(
        CELERY_TASK_DEFAULT_QUEUE,
        Exchange(CELERY_TASK_DEFAULT_QUEUE, type="direct"),  # what Celery declares for its default queue
        routing_key=CELERY_TASK_DEFAULT_QUEUE,
        queue_arguments={"x-queue-type": "quorum"} if CONFIG.AMQP_QUORUM_QUEUES else None,
    ),
)
CELERY_TASK_ACKS_LATE = True  # a worker that dies mid-task leaves the task to run again
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True  # no result backend: the outbox rows are the result
CELERY_TASK_SOFT_TIME_LIMIT = 120
CELERY_TASK_TIME_LIMIT = 150
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Beat keeps its one interval in memory: no schedule file to place, lock or keep writable.
CELERY_BEAT_SCHEDULER = "celery.beat:Scheduler"
CELERY_BEAT_SCHEDULE = {
    "relay-outbox": {
        "task": "outbox.tasks.relay_outbox",
        "schedule": CONFIG.EVENTS_SWEEP_INTERVAL,
        # A sweep still queued after one interval is superseded by the next one.
        "options": {"expires": CONFIG.EVENTS_SWEEP_INTERVAL},
    }
}
EVENTS_RELAY_BATCH = CONFIG.EVENTS_RELAY_BATCH

# --- HTTP ------------------------------------------------------------------
JSON_BODY_LIMIT = CONFIG.JSON_BODY_LIMIT
DATA_UPLOAD_MAX_MEMORY_SIZE = max(CONFIG.JSON_BODY_LIMIT, 1)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["conversations.api.authentication.UserIdHeaderAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": [],
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_PARSER_CLASSES": ["core.http.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "EXCEPTION_HANDLER": "core.http.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNICODE_JSON": True,
    "COMPACT_JSON": True,
}

# --- API behaviour -----------------------------------------------------------
READS_REQUIRE_MEMBER = CONFIG.READS_REQUIRE_MEMBER
PG_PREPARED_STATEMENTS = CONFIG.PG_PREPARED_STATEMENTS  # core.db.pg
IDEMPOTENCY_KEY_TTL = CONFIG.IDEMPOTENCY_KEY_TTL  # seconds
METRICS_TOKEN = CONFIG.METRICS_TOKEN
PROMETHEUS_MULTIPROC_DIR = CONFIG.PROMETHEUS_MULTIPROC_DIR
# Live delivery (conversations/live).
LIVE_WAIT_MAX = CONFIG.LIVE_WAIT_MAX  # seconds
LIVE_HEARTBEAT = CONFIG.LIVE_HEARTBEAT  # seconds
# Gauges computed when /metrics is scraped (core/http/metrics.py), one collector per app.
METRICS_INSTANCE_COLLECTORS = [
    "core.http.metrics.DatabaseCollector",
    "outbox.metrics.BacklogCollector",
    "discovery.metrics.RegistrationCollector",
]

# OpenAPI description at /schema, Swagger UI at /schema/docs.
SPECTACULAR_SETTINGS = {
    "TITLE": "messenger",
    "DESCRIPTION": 'The chat API of the Microservices March messenger. Every error is `{"error": "..."}`.',
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "AUTHENTICATION_WHITELIST": [],  # identity is the User-Id header, documented per operation
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "POSTPROCESSING_HOOKS": ["conversations.api.openapi.postprocess"],
}

STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"  # filled by collectstatic in the Docker image
STATIC_ROOT.mkdir(exist_ok=True)
WHITENOISE_USE_FINDERS = True  # serve DRF's assets without a collectstatic step

USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"

LOGGING = logging_config(log_format=CONFIG.LOG_FORMAT, level=CONFIG.LOG_LEVEL)
