"""One log format per stream: JSON lines by default, readable text for `make run`."""

import json
import logging

from core.logging import JsonFormatter, RequestTextFormatter, TextFormatter, logging_config


def _record(name: str, message: str, *args) -> logging.LogRecord:
    return logging.LogRecord(name, logging.WARNING, __file__, 1, message, args, None)


def test_djangos_loggers_write_through_the_same_formatter_as_the_services():
    config = logging_config(log_format="json", level="INFO")
    assert config["loggers"]["django"] == {"handlers": ["console"], "level": "INFO", "propagate": False}
    assert config["root"]["handlers"] == ["console"]
    assert config["handlers"]["console"]["formatter"] == "record"
    assert config["formatters"]["record"] == {"()": JsonFormatter}


def test_a_json_record_is_one_object_with_its_logger_and_message():
    line = JsonFormatter().format(_record("django.request", "Not Found: %s", "/nope"))
    entry = json.loads(line)
    assert "\n" not in line
    assert {key: entry[key] for key in ("level", "logger", "msg")} == {
        "level": "WARNING",
        "logger": "django.request",
        "msg": "Not Found: /nope",
    }
    assert set(entry) == {"ts", "level", "logger", "msg", "pid"}


def test_the_text_format_renders_the_request_line_and_records_alike():
    config = logging_config(log_format="text", level="INFO")
    assert config["formatters"] == {"record": {"()": TextFormatter}, "request": {"()": RequestTextFormatter}}
    request = json.dumps(
        {
            "ts": "2026-12-01T10:00:00.000Z",
            "msg": "request",
            "method": "GET",
            "path": "/health",
            "status": 200,
            "duration_ms": 1.5,
            "request_id": "abc",
        }
    )
    assert RequestTextFormatter().format(_record("messenger.requests", request)) == (
        "2026-12-01T10:00:00.000Z GET /health 200 1.5ms request_id=abc"
    )
    assert (
        TextFormatter()
        .format(_record("outbox.kicker", "could not enqueue"))
        .endswith("Z WARNING outbox.kicker could not enqueue")
    )
