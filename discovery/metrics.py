"""`messenger_consul_registered`: whether the Consul agent knows this instance, asked at scrape time.

A worker's copy of the registration cannot see what the master's registration
thread did since, so the agent itself is asked. No gauge while the instance
does not register (CONSUL_SERVICE_NAME unset).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily

from discovery import registration


class RegistrationCollector:
    def collect(self) -> Iterator[GaugeMetricFamily]:
        current = registration.current()
        if current is None:
            return
        try:
            registered = current.known_to_agent(timeout=registration.SCRAPE_TIMEOUT_SECONDS)
        except registration.CONSUL_ERRORS:  # no agent to ask: not known to it
            registered = False
        yield GaugeMetricFamily(
            "messenger_consul_registered",
            "1 while this instance is registered in Consul, else 0.",
            value=1 if registered else 0,
        )
