"""Observable instances: one JSON log line per request, X-Request-Id, and /metrics.

In-process checks of the middleware and the metrics view; the gunicorn side
(several workers summed, the line on stdout, Consul's gauge) is in
tests/test_observability_live.py.
"""

import json
import logging
import re

import pytest

from conversations.tests.client import post_message
from core.http import observability
from outbox.models import OutboxEvent
from tests.support.metrics import sample

pytestmark = pytest.mark.django_db

# The request log line's keys, in the order it writes them.
REQUEST_LINE_KEYS = ["ts", "msg", "method", "path", "route", "status", "duration_ms", "instance", "request_id", "pid"]

MESSAGES_ROUTE = "/conversations/{conversation_id}/messages"


class Lines(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.INFO)
        self.records = []

    def emit(self, record):
        self.records.append(json.loads(record.getMessage()))


@pytest.fixture
def log_lines():
    """The request log's lines as dicts (the logger does not propagate, so caplog cannot see it)."""
    logger = logging.getLogger("messenger.requests")
    handler, level = Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_each_request_writes_one_json_line(api, users, conversation, log_lines):
    response = post_message(api, conversation.pk, users[0].pk, "hi", HTTP_X_REQUEST_ID="trace-abc.123")
    assert response.status_code == 201
    assert response["X-Request-Id"] == "trace-abc.123"
    assert len(log_lines) == 1
    line = log_lines[0]
    assert set(line) == set(REQUEST_LINE_KEYS)
    assert line["msg"] == "request"
    assert (line["method"], line["path"], line["route"], line["status"]) == (
        "POST",
        f"/conversations/{conversation.pk}/messages",
        MESSAGES_ROUTE,
        201,
    )
    assert line["request_id"] == "trace-abc.123"
    assert line["instance"] == observability.instance_id()
    assert isinstance(line["duration_ms"], float) and 0 <= line["duration_ms"] < 10_000
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", line["ts"])


@pytest.mark.parametrize("offered", [None, "", "has spaces", "x" * 129, 'quote"d', "trailing-newline\n"])
def test_missing_or_unusable_request_id_is_replaced_by_a_new_one(api, log_lines, offered):
    headers = {} if offered is None else {"HTTP_X_REQUEST_ID": offered}
    first = api.get("/health", **headers)
    second = api.get("/health", **headers)
    for response in (first, second):
        assert re.match(r"^[0-9a-f]{32}$", response["X-Request-Id"])
    assert first["X-Request-Id"] != second["X-Request-Id"]
    assert [line["request_id"] for line in log_lines] == [first["X-Request-Id"], second["X-Request-Id"]]


@pytest.mark.parametrize("path", ['/no/such/"quoted"\\path', "/no/such/é漢😀", "/no/such/\u2028\x7f"])
def test_a_log_line_is_exactly_the_json_of_its_fields(api, path):
    """The line is built as text for speed: it must be what `json.dumps` writes for the same fields, in order."""
    texts = []
    handler = logging.Handler(level=logging.INFO)
    handler.emit = lambda record: texts.append(record.getMessage())
    logger = logging.getLogger("messenger.requests")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        assert api.get(path, HTTP_X_REQUEST_ID="trace:1/2+3=4@x").status_code == 404
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    [text] = texts
    fields = json.loads(text)
    assert fields["path"] == path
    assert list(fields) == REQUEST_LINE_KEYS
    assert text == json.dumps(fields, ensure_ascii=False, separators=(",", ":"))


def test_refusals_and_unknown_routes_are_logged_with_their_route(api, users, conversation, log_lines, settings):
    settings.JSON_BODY_LIMIT = 10
    too_large = post_message(api, conversation.pk, users[0].pk, "x" * 50)
    unknown = api.get("/no/such/thing/42")
    assert (too_large.status_code, unknown.status_code) == (413, 404)
    assert "X-Request-Id" in too_large and "X-Request-Id" in unknown
    assert [(line["route"], line["status"]) for line in log_lines] == [(MESSAGES_ROUTE, 413), ("unmatched", 404)]


def test_no_log_line_is_built_below_info(api, settings):
    """At LOG_LEVEL WARNING (the test default) the request log costs nothing."""
    assert not logging.getLogger("messenger.requests").isEnabledFor(logging.INFO)
    assert api.get("/health").status_code == 200


# --- /metrics -----------------------------------------------------------------------


def scrape(api) -> str:
    response = api.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    return response.content.decode()


def test_metrics_count_requests_by_route_template_and_status(api, users, conversation):
    labels = {"method": "POST", "route": MESSAGES_ROUTE, "status": "201"}
    before = sample(scrape(api), "messenger_http_requests_total", **labels) or 0
    bucket_before = sample(scrape(api), "messenger_http_request_duration_seconds_count", **labels) or 0
    for n in range(3):
        post_message(api, conversation.pk, users[0].pk, f"m{n}")
    text = scrape(api)
    assert sample(text, "messenger_http_requests_total", **labels) == before + 3
    assert sample(text, "messenger_http_request_duration_seconds_count", **labels) == bucket_before + 3
    assert sample(text, "messenger_http_request_duration_seconds_bucket", **labels, le="+Inf") == bucket_before + 3
    # Paths never become labels: the conversation's id is not in any series.
    assert f"/conversations/{conversation.pk}/" not in text


def test_metrics_report_the_outbox_backlog_and_the_database(api, users, conversation):
    for n in range(2):
        post_message(api, conversation.pk, users[0].pk, f"m{n}")
    pending = OutboxEvent.objects.filter(sent_at__isnull=True).count()
    assert pending >= 2  # no broker in this test: events wait in the outbox
    text = scrape(api)
    assert sample(text, "messenger_outbox_backlog") == pending
    assert sample(text, "messenger_database_up") == 1


def test_metrics_token_when_set_is_required(api, settings):
    settings.METRICS_TOKEN = "s3cret"
    for headers in ({}, {"HTTP_AUTHORIZATION": "Bearer wrong"}, {"HTTP_AUTHORIZATION": "s3cret"}):
        response = api.get("/metrics", **headers)
        assert response.status_code == 401
        assert response.json() == {"error": "Metrics need the bearer token in METRICS_TOKEN."}
        assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'
    allowed = api.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret")
    assert allowed.status_code == 200
    assert b"messenger_http_requests_total" in allowed.content


def test_metrics_refuse_writes(api):
    response = api.post("/metrics", {}, format="json")
    assert response.status_code == 405
    assert response.json() == {"error": 'Method "POST" not allowed.'}
