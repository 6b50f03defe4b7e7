"""What the per-request observability costs: the request-log/metrics and database-deadline middlewares.

Usage: python bench/middleware_overhead.py [--requests 20000]

Times each middleware around a view that does nothing, as gunicorn runs them:
prometheus-client in multi-process mode (files in a temporary folder) and the
JSON log line written (to /dev/null) at LOG_LEVEL=INFO. Prints microseconds per
request, the median of five rounds. Needs no database: nothing is queried.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Before prometheus_client is imported, as messenger/gunicorn_conf.py does it.
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="bench-metrics-")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "messenger.settings")
os.environ.setdefault("LOG_LEVEL", "INFO")
os.environ.setdefault("PGHOST", "127.0.0.1")  # only so the database deadline is on; nothing connects

import django  # noqa: E402

django.setup()

import logging  # noqa: E402

from django.http import HttpResponse  # noqa: E402
from django.test import RequestFactory  # noqa: E402
from django.urls import resolve  # noqa: E402

from core.db.deadline import DatabaseDeadlineMiddleware  # noqa: E402
from core.http.observability import RequestObservabilityMiddleware  # noqa: E402

PATH = "/conversations/1/messages"


def view(request):
    request.resolver_match = MATCH  # what Django's URL resolution leaves on the request
    return HttpResponse(b"{}", content_type="application/json")


MATCH = resolve(PATH)


def per_request_us(handler, requests: int) -> float:
    factory = RequestFactory()
    batch = [factory.post(PATH, b"{}", content_type="application/json") for _ in range(requests)]
    started = time.perf_counter()
    for request in batch:
        handler(request)
    return (time.perf_counter() - started) / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args()
    logging.getLogger("messenger.requests").handlers[0].setStream(open(os.devnull, "w"))

    stacks = {
        "bare view": view,
        "+ request log and metrics": RequestObservabilityMiddleware(view),
        "+ database deadline": DatabaseDeadlineMiddleware(view),
        "+ both": RequestObservabilityMiddleware(DatabaseDeadlineMiddleware(view)),
    }
    figures = {
        name: statistics.median(per_request_us(stack, args.requests) for _ in range(5))
        for name, stack in stacks.items()
    }
    bare = figures["bare view"]
    for name, value in figures.items():
        extra = "" if name == "bare view" else f"  (+{value - bare:.1f} µs)"
        print(f"{name:28s} {value:7.1f} µs/request{extra}")


if __name__ == "__main__":
    main()
