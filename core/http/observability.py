"""What an instance tells its operators: a JSON log line per request, and metrics.

`RequestObservabilityMiddleware` runs outermost. For every request it takes
the caller's `X-Request-Id` (or makes one), echoes it in the response, counts
the request and its latency in Prometheus metrics labelled by route template
(never by raw path, so ids do not explode the series), and writes one JSON
line on the `messenger.requests` logger:

    {"ts": "...", "msg": "request", "method": "POST", "path": "/conversations/1/messages",
     "route": "/conversations/{conversation_id}/messages", "status": 201, "duration_ms": 4.1,
     "instance": "host:4000", "request_id": "...", "pid": 1234}

`/metrics` (core/http/metrics.py) serves them in Prometheus' text format. gunicorn runs several
worker processes, so the counters live in prometheus-client's multi-process
files (PROMETHEUS_MULTIPROC_DIR, which gunicorn's config sets) and a scrape of
any worker sums every worker. Gauges that describe the instance rather than a
worker (outbox backlog, database reachability, Consul registration) are
computed when scraped.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time

from django.conf import settings
from django.urls import Resolver404, resolve
from prometheus_client import Counter, Histogram

logger = logging.getLogger("messenger.requests")

REQUEST_ID_HEADER = "X-Request-Id"
# A caller's id is kept only if it is short and plain, so it is safe in logs and headers.
_USABLE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")  # the whole id (fullmatch)
UNMATCHED_ROUTE = "unmatched"

REQUESTS = Counter(
    "messenger_http_requests",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
LATENCY = Histogram(
    "messenger_http_request_duration_seconds",
    "Time to answer an HTTP request, by method, route template and status.",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def instance_id() -> str:
    """This instance, as logs name it: its Consul service id (see `name_instance`), else host:port."""
    return f"{socket.gethostname()}:{settings.CONFIG.PORT}"


def name_instance(name: str) -> None:
    """Name this instance in log lines (discovery does, with its Consul service id, before workers fork)."""
    global _INSTANCE
    _INSTANCE = _encoded(name)


_INSTANCE: str | None = None  # the instance's name, JSON-encoded for the log line
_ROUTE_TEMPLATES: dict[str, str] = {}
_CONVERTER = re.compile(r"<(?:\w+:)?(\w+)>")


def _route_template(request) -> str:
    """`/conversations/{conversation_id}/messages` for the route that served the request."""
    match = getattr(request, "resolver_match", None)
    return route_of(request.path_info) if match is None else _template(match.route)


def route_of(path: str) -> str:
    """The route template of the route `path` resolves to (for a request answered before, or without, URL resolution)."""
    try:
        match = resolve(path)
    except Resolver404:
        return UNMATCHED_ROUTE
    return _template(match.route)


def _template(route: str) -> str:
    template = _ROUTE_TEMPLATES.get(route)
    if template is None:
        # The JSON 404 catch-all is a regex route: every unknown path shares one label.
        template = UNMATCHED_ROUTE if route.startswith("^") else "/" + _CONVERTER.sub(r"{\1}", route)
        _ROUTE_TEMPLATES[route] = template
    return template


def _request_id(request) -> str:
    return request_id(request.META)


def request_id(meta) -> str:
    """The caller's X-Request-Id when usable, else a new one (also for answers the live listener writes itself)."""
    offered = meta.get("HTTP_X_REQUEST_ID", "")
    return offered if _USABLE_REQUEST_ID.fullmatch(offered) else os.urandom(16).hex()  # a uuid4's 32 hex digits


# The labelled children of both metrics by (method, route, status): labels() validates and
# locks on every call, which cost more than the counting itself on a fast request.
_SERIES: dict[tuple[str, str, str], tuple] = {}


def _series(method: str, route: str, status: str) -> tuple:
    key = (method, route, status)
    series = _SERIES.get(key)
    if series is None:
        series = _SERIES[key] = (REQUESTS.labels(method, route, status), LATENCY.labels(method, route, status))
    return series


_TIMESTAMP_SECOND = [-1, ""]  # the last whole second written, and its "YYYY-MM-DDTHH:MM:SS"


def _timestamp(now: float) -> str:
    """`now` as the log's ISO 8601 UTC with milliseconds; the seconds' text is made once a second."""
    second = int(now)
    cached = _TIMESTAMP_SECOND
    if cached[0] != second:
        cached[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        cached[0] = second
    return f"{cached[1]}.{int((now - second) * 1000):03d}Z"


def _json(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


# JSON text of the values that repeat from request to request (methods, route
# templates, the instance): encoded once, not per line.
_ENCODED: dict[str, str] = {}


def _encoded(value: str) -> str:
    text = _ENCODED.get(value)
    if text is None:
        text = _ENCODED[value] = _json(value)
    return text


def _log_line(method: str, path: str, route: str, status: int, elapsed: float, request_id: str) -> str:
    """The request's JSON line, key for key what `json.dumps` of the dict would write, built as text.

    Only the path is encoded per request; a request id is plain by construction
    (`_USABLE_REQUEST_ID` or hex), so it needs no escaping.
    """
    global _INSTANCE
    if _INSTANCE is None:
        _INSTANCE = _encoded(instance_id())
    return (
        f'{{"ts":"{_timestamp(time.time())}","msg":"request","method":{_encoded(method)},'
        f'"path":{_json(path)},"route":{_encoded(route)},"status":{status},'
        f'"duration_ms":{round(elapsed * 1000, 3)!r},"instance":{_INSTANCE},'
        f'"request_id":"{request_id}","pid":{os.getpid()}}}'
    )


def record(method: str, path: str, route: str, status: int, elapsed: float, request_id: str) -> None:
    """Count a request answered and write its log line (the middleware's; the live listener's own answers too)."""
    requests, latency = _series(method, route, str(status))
    requests.inc()
    latency.observe(elapsed)
    if logger.isEnabledFor(logging.INFO):
        # The record made directly: Logger.info would also walk the stack to
        # find its caller, which no handler here prints. Handlers, filters and
        # levels apply as they would.
        logger.handle(
            logging.LogRecord(
                logger.name,
                logging.INFO,
                __file__,
                0,
                _log_line(method, path, route, status, elapsed, request_id),
                None,
                None,
            )
        )


class RequestObservabilityMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        request.request_id = _request_id(request)
        response = self.get_response(request)
        elapsed = time.perf_counter() - started
        response[REQUEST_ID_HEADER] = request.request_id
        record(
            request.method, request.path, _route_template(request), response.status_code, elapsed, request.request_id
        )
        return response
