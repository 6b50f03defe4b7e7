"""The service's configuration schema: every environment variable, declared once.

This module is the single source of truth for configuration, the way the
reference service used a convict schema. Each `Setting` names its variable, its
type, its default (optionally per environment), and a one-line doc. `load()`
reads the environment once, collects *every* missing or invalid value, and
raises one `ConfigError` naming them all, so a bad deploy fails at start-up with
a clear message instead of on the first request.

Settings modules read from the `Config` object this returns; nothing else in the
project reads `os.environ` for its configuration.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import environ

ENVIRONMENTS = ("development", "test", "production")
_UNSET = object()

# Units as the `bytes` library the reference used: 1kb = 1024 bytes.
_BYTE_UNITS = {"b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "tb": 1 << 40, "pb": 1 << 50}
_BYTES_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|tb|pb)?\s*$", re.IGNORECASE)
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class ConfigError(Exception):
    """One or more environment variables are missing or invalid."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"Invalid configuration ({len(problems)} problem(s)):\n{lines}")


def parse_bytes(raw: str) -> int:
    """Parse a size such as `20b`, `100kb` or `1.5mb` into bytes."""
    match = _BYTES_RE.match(raw)
    if not match:
        raise ValueError("expected a size such as 20b, 100kb or 1mb")
    number, unit = match.groups()
    return int(float(number) * _BYTE_UNITS[(unit or "b").lower()])


def parse_duration(raw: str) -> float:
    """Parse a duration such as `15s`, `1m`, `500ms` or `2` (seconds) into seconds."""
    match = _DURATION_RE.match(raw)
    if not match:
        raise ValueError("expected a duration such as 500ms, 15s or 1m")
    number, unit = match.groups()
    return float(number) * _DURATION_UNITS[unit]


def format_duration(seconds: float) -> str:
    """The Consul/Go form of a duration: `15s`, `1m`, `500ms`."""
    if seconds < 1:
        return f"{int(round(seconds * 1000))}ms"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


# Typed parsing is django-environ's (`Env.parse_value`, what its typed getters use);
# the schema adds the ranges a value must fall in, and the units of sizes and durations.
_FALSE_STRINGS = ("false", "off", "no", "n", "0", "")


def _ranged(cast: type, problem: str, minimum: float, maximum: float = float("inf")) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        value = environ.Env.parse_value(raw.strip(), cast)
        if not minimum <= value <= maximum:
            raise ValueError(problem)
        return value

    return parse


def _parse_bool(raw: str) -> bool:
    # django-environ reads any unknown word as false; a typo must not switch a feature off silently.
    if raw.strip().lower() not in (*environ.Env.BOOLEAN_TRUE_STRINGS, *_FALSE_STRINGS):
        raise ValueError("expected true or false")
    return environ.Env.parse_value(raw.strip(), bool)


def _parse_list(raw: str) -> list[str]:
    return [item.strip() for item in environ.Env.parse_value(raw, list) if item.strip()]


PARSERS: dict[str, Callable[[str], Any]] = {
    "str": str,
    "int": lambda raw: environ.Env.parse_value(raw.strip(), int),
    "port": _ranged(int, "expected a port between 1 and 65535", 1, 65535),
    "listen_port": _ranged(int, "expected a port between 0 (a free one) and 65535", 0, 65535),
    "positive_int": _ranged(int, "expected a positive integer", 1),
    "float": _ranged(float, "expected a number >= 0", 0),
    "bool": _parse_bool,
    "bytes": parse_bytes,
    "duration": parse_duration,
    "list": _parse_list,
}


@dataclass(frozen=True)
class Setting:
    """One environment variable: its type, default and meaning."""

    name: str
    type: str
    doc: str
    default: Any = None
    # Per-environment defaults override `default` for that environment.
    env_defaults: Mapping[str, Any] = field(default_factory=dict)
    choices: tuple[str, ...] | None = None
    secret: bool = False
    # Older names still honoured (the reference's NODE_ENV, for example).
    aliases: tuple[str, ...] = ()
    # A `<NAME>_FILE` variable may hold the path of a file with the value,
    # for secret stores that mount files (Docker/Kubernetes secrets).
    from_file: bool = False

    def default_for(self, environment: str) -> Any:
        return self.env_defaults.get(environment, self.default)


# The schema. Group by integration; keep each doc to one line.
# One declaration per line, as a table: kept out of the formatter's hands.
# fmt: off
SCHEMA: tuple[Setting, ...] = (
    # --- the service -------------------------------------------------------
    Setting("APP_ENV", "str", "Environment that selects defaults: development, test or production.",
            default="development", choices=ENVIRONMENTS, aliases=("NODE_ENV",)),
    Setting("PORT", "listen_port", "TCP port the HTTP server listens on; 0: a free port, chosen at start, registered in Consul and written to PORT_FILE (several instances on one host network).", default=4000),
    Setting("PORT_FILE", "str", "File the serving instance writes the port it listens on to, for a health check that cannot know it beforehand (PORT=0); unset: none.", default=""),
    Setting("BIND_HOST", "str", "Address the HTTP server binds to.", default="0.0.0.0"),
    Setting("JSON_BODY_LIMIT", "bytes", "Largest request body accepted, with unit (20b, 100kb, 1mb); larger is refused with 413.",
            default="100kb"),
    Setting("SECRET_KEY", "str", "Django signing key; the API signs nothing, so a random per-process key is used when unset.",
            secret=True, from_file=True),
    Setting("DEBUG", "bool", "Django debug mode (never in production).", default=False),
    Setting("ALLOWED_HOSTS", "list", "Host headers the service answers to, comma-separated.", default="*"),
    Setting("LOG_LEVEL", "str", "Log level of the service's own loggers.", default="INFO",
            env_defaults={"test": "WARNING"}, choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")),
    Setting("LOG_FORMAT", "str", "Log line format on stdout and stderr: json (one object per line) or text (readable, for make run).",
            default="json", env_defaults={"development": "text"}, choices=("json", "text")),
    Setting("DATA_DIR", "str", "Folder of make run's embedded PostgreSQL (its cluster in DATA_DIR/postgres), used when PGHOST is unset.", default="var"),
    Setting("WEB_CONCURRENCY", "positive_int", "gunicorn worker processes per instance; one by default: scale out with more instances (each process costs ~70 MiB).",
            default=1),
    Setting("WEB_THREADS", "positive_int", "Threads per gunicorn worker, each with its own PostgreSQL connection.", default=4),
    Setting("GRACEFUL_TIMEOUT", "float", "Seconds gunicorn lets in-flight requests finish on shutdown.", default=20),
    # --- live delivery (conversations/live: long-poll `wait` and the SSE stream) --
    Setting("LIVE_PORT", "port", "TCP port of the instance's live listener (gunicorn's ASGI worker, started beside the WSGI one on PostgreSQL); unset: a free port, advertised in Consul.",
            default=None),
    Setting("LIVE_WAIT_MAX", "positive_int", "Largest `wait` (seconds) a message page accepts; NGINX's read timeout for the live routes stays above it.",
            default=30),
    Setting("LIVE_HEARTBEAT", "duration", "How often an idle event stream gets a comment line, so proxies keep it open.",
            default="15s"),
    # --- PostgreSQL (unset PGHOST: the embedded one under DATA_DIR) ----------
    Setting("PGHOST", "str", "PostgreSQL host (or the folder of its Unix socket), or several, comma-separated (libpq's multi-host form: tried in turn, see PGTARGETSESSIONATTRS); unset: the embedded PostgreSQL that make run starts under DATA_DIR."),
    Setting("PGPORT", "port", "PostgreSQL port.", default=5432),
    Setting("PGUSER", "str", "PostgreSQL role the service connects as.", default="postgres"),
    Setting("PGPASSWORD", "str", "Password of PGUSER (or PGPASSWORD_FILE: a file holding it).", secret=True, from_file=True),
    Setting("PGDATABASE", "str", "PostgreSQL database name.", default="messenger"),
    Setting("PGTARGETSESSIONATTRS", "str", "Which of PGHOST's servers a connection keeps (libpq's target_session_attrs): read-write finds the leader of a replicated cluster, whichever host it is now.",
            default="any", choices=("any", "read-write", "read-only", "primary", "standby", "prefer-standby")),
    Setting("CREATE_DB_NAME", "str", "Database the create_db job creates (it connects to PGDATABASE to do so)."),
    Setting("DB_APPLICATION_USER", "str", "Role of the serving instances; `migrate` (run as the migrator) grants it row access to every table (unset: no grants)."),
    Setting("REQUIRE_MIGRATED_DB", "bool", "A serving instance refuses to start while the database has unapplied migrations (the migrator instance turns this off).",
            default=True),
    Setting("PG_CONNECT_TIMEOUT", "duration", "Longest wait for a new PostgreSQL connection (whole seconds, at least 2s as libpq requires).",
            default="5s"),
    Setting("PG_STATEMENT_TIMEOUT", "duration", "Longest a single SQL statement may run before PostgreSQL cancels it (0 disables).",
            default="5s"),
    Setting("PG_PREPARED_STATEMENTS", "bool", "Prepare the hot requests' statements (a message post, a page of messages, a page of conversations) once per connection; off behind a transaction-pooling pgbouncer, which cannot keep them.",
            default=True),
    # --- RabbitMQ (unset AMQPHOST: no broker, events wait in the outbox) ---
    Setting("AMQPHOST", "str", "RabbitMQ host, or a cluster's nodes, comma-separated (a lost node's clients move to the next); unset means no broker (events stay in the outbox)."),
    Setting("AMQPPORT", "port", "RabbitMQ port.", default=5672),
    Setting("AMQPUSER", "str", "RabbitMQ user.", default="guest"),
    Setting("AMQPPASSWORD", "str", "RabbitMQ password (or AMQPPASSWORD_FILE).", default="guest", secret=True, from_file=True),
    Setting("AMQPVHOST", "str", "RabbitMQ virtual host.", default="/"),
    Setting("AMQP_QUORUM_QUEUES", "bool", "Declare Celery's own queue as a quorum queue, replicated over a RabbitMQ cluster's nodes (the several-hosts topology); Celery then uses per-consumer prefetch, which quorum queues require. Off: a classic queue, as a single broker has.",
            default=False),
    Setting("EVENTS_SWEEP_INTERVAL", "duration", "How often the worker's beat relays outbox events still pending (broker or worker was down).",
            default="10s"),
    Setting("EVENTS_RELAY_BATCH", "positive_int", "Outbox events published per relay transaction; a relay killed mid-batch resends at most this many.",
            default=100),
    # --- Consul --------------------------------------------------------------
    Setting("CONSUL_SERVICE_NAME", "str", "Name this instance registers under in Consul; unset means do not register."),
    Setting("CONSUL_HOST", "str", "Host of the Consul agent.", default="consul-client"),
    Setting("CONSUL_PORT", "port", "HTTP port of the Consul agent.", default=8500),
    Setting("CONSUL_SERVICE_ADDRESS", "str", "Address registered for this instance; unset: the address this host uses to reach the Consul agent."),
    Setting("CONSUL_CHECK_INTERVAL", "duration", "How often Consul calls this instance's /health.", default="15s"),
    Setting("CONSUL_DEREGISTER_CRITICAL_AFTER", "duration", "Consul removes an instance whose check stays critical this long (Consul enforces at least 1m).",
            default="1m"),
    Setting("CONSUL_RETRY_INTERVAL", "duration", "Longest wait between registration attempts while Consul is unreachable (once registered, the agent is asked every second).",
            default="10s"),
    Setting("SHUTDOWN_DRAIN_SECONDS", "float", "Seconds a registered instance keeps serving after deregistering on SIGTERM/SIGINT, so the load balancer drops it first; as long again at most while requests still arrive.",
            default=5, env_defaults={"test": 0.5}),
    # --- API behaviour and observability -------------------------------------
    Setting("READS_REQUIRE_MEMBER", "bool", "Only participants may read a conversation's messages (User-Id required); off keeps the tutorial's open reads.",
            default=False),
    Setting("IDEMPOTENCY_KEY_TTL", "duration", "How long an Idempotency-Key on a message post is remembered; a replay after that posts again.",
            default="24h"),
    Setting("METRICS_TOKEN", "str", "Bearer token that GET /metrics requires; unset leaves /metrics open (keep it off the public load balancer).",
            secret=True, from_file=True),
    Setting("PROMETHEUS_MULTIPROC_DIR", "str", "Folder where gunicorn's workers share metric files; unset: gunicorn makes a fresh temporary one."),
)
# fmt: on

SCHEMA_BY_NAME = {s.name: s for s in SCHEMA}


class Config(Mapping[str, Any]):
    """The loaded configuration: a read-only mapping of name to typed value."""

    def __init__(self, values: dict[str, Any], sources: dict[str, str], raw: dict[str, str | None]):
        self._values = values
        self._sources = sources
        self._raw = raw

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def environment(self) -> str:
        return self._values["APP_ENV"]

    def source(self, name: str) -> str:
        """Where a value came from: `environment`, `file`, or `default`."""
        return self._sources[name]

    def display(self, name: str) -> str:
        """The value as `manage.py config` shows it, secrets masked."""
        value = self._values[name]
        if value is None:
            return "(unset)"
        if SCHEMA_BY_NAME[name].secret:
            return "********"
        if isinstance(value, list):
            return ",".join(value)
        if SCHEMA_BY_NAME[name].type in ("bytes", "duration"):
            return str(self._raw[name])  # as written: 100kb, not 102400
        return str(value)


def _raw_value(setting: Setting, env: Mapping[str, str]) -> tuple[str | None, str, str | None]:
    """Return (raw value, source, problem) for one setting."""
    for name in (setting.name, *setting.aliases):
        if env.get(name, "") != "":
            return env[name], "environment", None
    if setting.from_file and env.get(f"{setting.name}_FILE"):
        path = env[f"{setting.name}_FILE"]
        try:
            return Path(path).read_text().strip(), "file", None
        except OSError as exc:
            return None, "file", f"{setting.name}_FILE: cannot read {path}: {exc.strerror}"
    return None, "default", None


def load(env: Mapping[str, str] | None = None) -> Config:
    """Read and validate every setting; raise one ConfigError naming all problems."""
    env = os.environ if env is None else env
    problems: list[str] = []
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    raws: dict[str, str | None] = {}

    # The environment name comes first: it selects the other defaults.
    app_env_setting = SCHEMA_BY_NAME["APP_ENV"]
    raw_env, _, _ = _raw_value(app_env_setting, env)
    environment = (raw_env or app_env_setting.default).strip()
    if environment not in ENVIRONMENTS:
        problems.append(f"APP_ENV: {environment!r} is not one of {', '.join(ENVIRONMENTS)}")
        environment = app_env_setting.default

    for setting in SCHEMA:
        raw, source, problem = _raw_value(setting, env)
        if problem:
            problems.append(problem)
            continue
        if raw is None:
            default = setting.default_for(environment)
            raw = None if default is None else str(default)
            source = "default"
        sources[setting.name] = source
        raws[setting.name] = raw
        if raw is None:
            values[setting.name] = None
            continue
        if setting.choices and raw not in setting.choices:
            if setting.name != "APP_ENV":  # already reported above
                problems.append(f"{setting.name}: {raw!r} is not one of {', '.join(setting.choices)}")
            values[setting.name] = setting.default_for(environment)
            continue
        try:
            values[setting.name] = PARSERS[setting.type](raw)
        except ValueError as exc:
            shown = "********" if setting.secret else repr(raw)
            problems.append(f"{setting.name}: {shown} is invalid ({exc})")

    if problems:
        raise ConfigError(problems)
    return Config(values, sources, raws)


# --- documentation rendered from the schema (docs/configuration.md, .env.example) -----


def markdown_table() -> str:
    """The schema as the configuration table of docs/configuration.md."""
    lines = ["| variable | type | default | description |", "|---|---|---|---|"]
    for setting in SCHEMA:
        default = "" if setting.default is None else str(setting.default)
        per_env = ", ".join(f"{env}: {value}" for env, value in setting.env_defaults.items())
        if per_env:
            default = f"{default} ({per_env})"
        lines.append(f"| `{setting.name}` | {setting.type} | {default} | {setting.doc} |")
    return "\n".join(lines) + "\n"


def env_example() -> str:
    """The schema as `.env.example`: every variable, with its default where it has one."""
    lines = [
        "# Every variable the messenger service reads, with its default (from core/config.py).",
        "# Export them (or give them to your process manager); unset variables take the default shown.",
        "",
    ]
    for setting in SCHEMA:
        lines.append(f"# {setting.doc}")
        default = None if setting.default is None else str(setting.default)
        lines.append(f"{setting.name}={default}" if default is not None else f"# {setting.name}=")
    return "\n".join(lines) + "\n"
