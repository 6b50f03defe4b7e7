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
from datetime import datetime, timezone

from django.conf import settings
from django.urls import Resolver404, resolve
from prometheus_client import Counter, Histogram

logger = logging.getLogger("messenger.requests")

REQUEST_ID_HEADER = "X-Request-Id"
# A caller's id is kept only if it is short and plain, so it is safe in logs and headers.
_USABLE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
UNMATCHED_ROUTE = "unmatched"

REQUESTS = Counter(
    "messenger_http_requests", "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
LATENCY = Histogram(
    "messenger_http_request_duration_seconds", "Time to answer an HTTP request, by method, route template and status.",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def instance_id() -> str:
    """This instance, as logs name it: its Consul service id (see `name_instance`), else host:port."""
    return f"{socket.gethostname()}:{settings.CONFIG.PORT}"


def name_instance(name: str) -> None:
    """Name this instance in log lines (discovery does, with its Consul service id, before workers fork)."""
    global _INSTANCE
    _INSTANCE = name


_INSTANCE = None
_ROUTE_TEMPLATES: dict[str, str] = {}
_CONVERTER = re.compile(r"<(?:\w+:)?(\w+)>")


def _route_template(request) -> str:
    """`/conversations/{conversation_id}/messages` for the route that served the request."""
    match = getattr(request, "resolver_match", None)
    if match is None:  # answered before URL resolution (a 413, say): resolve it now
        try:
            match = resolve(request.path_info)
        except Resolver404:
            return UNMATCHED_ROUTE
    route = match.route
    template = _ROUTE_TEMPLATES.get(route)
    if template is None:
        # The JSON 404 catch-all is a regex route: every unknown path shares one label.
        template = UNMATCHED_ROUTE if route.startswith("^") else "/" + _CONVERTER.sub(r"{\1}", route)
        _ROUTE_TEMPLATES[route] = template
    return template


def _request_id(request) -> str:
    offered = request.META.get("HTTP_X_REQUEST_ID", "")
    return offered if _USABLE_REQUEST_ID.match(offered) else os.urandom(16).hex()  # a uuid4's 32 hex digits


# The labelled children of both metrics by (method, route, status): labels() validates and
# locks on every call, which cost more than the counting itself on a fast request.
_SERIES: dict[tuple[str, str, str], tuple] = {}


def _series(method: str, route: str, status: str) -> tuple:
    key = (method, route, status)
    series = _SERIES.get(key)
    if series is None:
        series = _SERIES[key] = (REQUESTS.labels(method, route, status), LATENCY.labels(method, route, status))
    return series


class RequestObservabilityMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        global _INSTANCE
        started = time.perf_counter()
        request.request_id = _request_id(request)
        response = self.get_response(request)
        elapsed = time.perf_counter() - started
        response[REQUEST_ID_HEADER] = request.request_id

        route = _route_template(request)
        status = str(response.status_code)
        requests, latency = _series(request.method, route, status)
        requests.inc()
        latency.observe(elapsed)
        if logger.isEnabledFor(logging.INFO):
            if _INSTANCE is None:
                _INSTANCE = instance_id()
            logger.info(json.dumps({
                "ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "msg": "request",
                "method": request.method,
                "path": request.path,
                "route": route,
                "status": response.status_code,
                "duration_ms": round(elapsed * 1000, 3),
                "instance": _INSTANCE,
                "request_id": request.request_id,
                "pid": os.getpid(),
            }, ensure_ascii=False, separators=(",", ":")))
        return response
