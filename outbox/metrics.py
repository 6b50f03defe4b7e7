"""`messenger_outbox_backlog`: events stored but not yet confirmed by the broker, at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily

from outbox.services import pending_events


class BacklogCollector:
    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            backlog = pending_events().count()
        except Exception:  # the database is down: messenger_database_up says so; no guess here
            return
        yield GaugeMetricFamily(
            "messenger_outbox_backlog", "Events stored but not yet published to the broker.", value=backlog
        )
