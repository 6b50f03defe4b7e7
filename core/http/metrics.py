"""`/metrics`: Prometheus' text format, for the instance as a whole.

gunicorn runs several worker processes, so the request counters
(core/http/observability.py) live in prometheus-client's multi-process files
(PROMETHEUS_MULTIPROC_DIR, which gunicorn's config sets) and a scrape of any
worker sums every worker. Gauges that describe the instance rather than a
worker are computed when scraped, by the collectors the project lists in
settings.METRICS_INSTANCE_COLLECTORS (each app contributes its own: the
database here, the outbox backlog, the Consul registration).
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.db import connection
from django.http import HttpResponse
from django.utils.module_loading import import_string
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily

from core.http.errors import json_error, safe_methods_only


class DatabaseCollector:
    """`messenger_database_up`: whether the database answers this scrape."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        except Exception:  # the database is down: report that rather than fail the scrape
            up = 0
        else:
            up = 1
        yield GaugeMetricFamily("messenger_database_up", "1 when the database answered this scrape, else 0.", value=up)


@functools.cache
def _instance_collectors() -> tuple[Any, ...]:
    return tuple(import_string(path)() for path in settings.METRICS_INSTANCE_COLLECTORS)


def _scrape() -> bytes:
    instance = CollectorRegistry(auto_describe=False)
    for collector in _instance_collectors():
        instance.register(collector)
    if settings.PROMETHEUS_MULTIPROC_DIR:
        workers = CollectorRegistry()
        multiprocess.MultiProcessCollector(workers, path=settings.PROMETHEUS_MULTIPROC_DIR)
        return generate_latest(workers) + generate_latest(instance)
    return generate_latest(REGISTRY) + generate_latest(instance)


def _authorised(request) -> bool:
    token = settings.METRICS_TOKEN
    if not token:
        return True
    offered = request.META.get("HTTP_AUTHORIZATION", "")
    return hmac.compare_digest(offered.encode(), f"Bearer {token}".encode())


@safe_methods_only
def metrics(request):
    """Prometheus text format; with METRICS_TOKEN set, only for `Authorization: Bearer <token>`."""
    if not _authorised(request):
        response = json_error("Metrics need the bearer token in METRICS_TOKEN.", 401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(_scrape(), content_type=CONTENT_TYPE_LATEST)
