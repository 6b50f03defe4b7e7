"""Log formats: one per stream, chosen by LOG_FORMAT (messenger/settings.py wires them).

`json` (the stack's default): every line is one JSON object, so a log
shipper reads the request log, the service's own loggers and Django's alike.
`text` (`make run`): the same records as readable lines.

The request log's line is built once, as JSON, by the middleware
(core/http/observability.py), the cheapest form on the hot path; in text mode
`RequestTextFormatter` renders it readably.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone


def _timestamp(created: float) -> str:
    return datetime.fromtimestamp(created, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, pid, and the traceback (exc) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    """`<ts> <LEVEL> <logger> <message>`, with the timestamps the request lines carry."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record.created)} {record.levelname} {record.name} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class RequestTextFormatter(logging.Formatter):
    """The middleware's JSON request line as one readable line: time, method, path, status, duration, id."""

    def format(self, record: logging.LogRecord) -> str:
        line = json.loads(record.getMessage())
        return (
            f"{line['ts']} {line['method']} {line['path']} {line['status']} "
            f"{line['duration_ms']}ms request_id={line['request_id']}"
        )


def _base(log_format: str) -> dict:
    json_lines = log_format == "json"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "record": {"()": JsonFormatter if json_lines else TextFormatter},
            # The request line is already a JSON object: pass it through as it is.
            "request": {"format": "%(message)s"} if json_lines else {"()": RequestTextFormatter},
        },
        "handlers": {
            "console": {"class": "logging.StreamHandler", "formatter": "record"},
            "requests": {"class": "logging.StreamHandler", "formatter": "request", "stream": "ext://sys.stdout"},
        },
        "root": {"handlers": ["console"], "level": "WARNING"},
    }


def gunicorn_logging(*, log_format: str, level: str) -> dict:
    """gunicorn's `logconfig_dict`: its own lines (boot, worker exits) in the same format, on stderr."""
    return {
        **_base(log_format),
        "loggers": {
            "gunicorn.error": {"handlers": ["console"], "level": level, "propagate": False},
            # The request line is the service's own: gunicorn's access log stays off (core/http/gunicorn_logger.py).
            "gunicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }


def logging_config(*, log_format: str, level: str) -> dict:
    """The LOGGING dict: the service's loggers at `level`, Django's at INFO, every line in `log_format`."""
    return {
        **_base(log_format),
        "loggers": {
            # One line per request (core/http/observability.py), on stdout, alone.
            "messenger.requests": {"handlers": ["requests"], "level": level, "propagate": False},
            # Django's own (django.request's 4xx/5xx warnings among them), in the same format;
            # Django's default handlers (console only with DEBUG, mail_admins) are replaced.
            "django": {"handlers": ["console"], "level": "INFO", "propagate": False},
            **{name: {"level": level} for name in ("messenger", "core", "discovery", "outbox", "conversations")},
        },
    }
