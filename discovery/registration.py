"""Consul registration of one serving instance.

One `Registration` per serving instance, started from this app's
`AppConfig.ready()` (discovery/apps.py, the design card's hook) but only in the process the
serving entry point marked: `messenger/gunicorn_conf.py` calls
`mark_serving_process()` in gunicorn's master, whose preloaded app runs
`ready()` once. Management commands, Celery workers, tests and gunicorn's
forked workers run `ready()` too, and register nothing. gunicorn's `when_ready`
hook calls `start()` again (a no-op when `ready()` already did; the start
itself when the app is not preloaded). It registers the instance under `CONSUL_SERVICE_NAME` with a unique id, the address
and port Consul and the load balancer reach it at, and an HTTP check on
`/health`. A background thread keeps it registered:

- while Consul is unreachable the instance serves anyway, and the thread retries
  with exponential backoff capped at `CONSUL_RETRY_INTERVAL`;
- once registered, the thread asks the agent every second for the status of
  the instance's check (the agent's own view, no call to the servers). An agent
  that no longer knows the service (a restarted agent may have forgotten it)
  gets it registered again;
- while the agent holds the check critical (`/health` answered 503: the
  database was away), the thread asks `/health` at the very address Consul's
  check calls whether it answers 200 again, and if so passes the check at
  once. Consul would otherwise wait for its next check, up to
  `CONSUL_CHECK_INTERVAL` (15s) later; a database outage turns every instance
  critical together, so the load balancer had none for that long after the
  database was back. Re-registering keeps a check's status; the check is
  removed and registered anew with the status `/health` just gave (between
  the two calls the service has no check, which Consul counts as passing:
  `/health` has just answered 200).

`stop()` deregisters, once; nothing registers after it. Registering an id that
is already registered replaces it, so every step here is safe to repeat.

An instance that died without deregistering (a SIGKILL) and that its
supervisor starts again on the same address and port would otherwise leave
its predecessor's entry behind, whose check the new process passes: the first
registration takes that entry over (only one process can listen there).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import urllib.error
import urllib.request
import uuid

import consul
import requests

from core.config import Config, format_duration

logger = logging.getLogger(__name__)

# Every call to the agent gives up after this long, so a hung agent stalls
# neither the retry loop nor shutdown for longer.
API_TIMEOUT_SECONDS = 5.0
# A metrics scrape never waits longer than this on the agent (discovery/metrics.py).
SCRAPE_TIMEOUT_SECONDS = 1.0
FIRST_RETRY_SECONDS = 0.5
# ready() runs before gunicorn binds its socket: the first registration waits
# (this long at most) until the instance answers, so it registers passing.
FIRST_REGISTRATION_WAIT_SECONDS = 30.0
# How often the agent is asked for this instance's check status (and, while critical, /health whether it
# answers again): a local call to the agent, cheap beside what an instance serves in a second.
STATUS_POLL_SECONDS = 1.0
_ANY_ADDRESS = {"", "0.0.0.0", "::", "[::]"}
# What a failed call to an unreachable or failing agent raises.
CONSUL_ERRORS = (consul.ConsulException, requests.RequestException, OSError)


class Registration:
    """This instance's entry in Consul's catalog."""

    def __init__(self, config: Config):
        self.name: str = config.CONSUL_SERVICE_NAME
        self.port: int = config.PORT
        self.consul_address = (config.CONSUL_HOST, config.CONSUL_PORT)
        self.service_id = f"{self.name}-{socket.gethostname()}-{self.port}-{uuid.uuid4().hex[:8]}"
        self.retry_interval: float = config.CONSUL_RETRY_INTERVAL
        self._configured_address: str | None = config.CONSUL_SERVICE_ADDRESS
        self._bind_host: str = config.BIND_HOST
        self._check_interval = format_duration(config.CONSUL_CHECK_INTERVAL)
        self._deregister_after = format_duration(config.CONSUL_DEREGISTER_CRITICAL_AFTER)
        self._client = self._agent_client(API_TIMEOUT_SECONDS)
        # Held around every register/deregister call, so a registration in
        # flight when stop() runs finishes before the deregistration.
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._registered_once = False

    def _agent_client(self, timeout: float) -> consul.Consul:
        host, port = self.consul_address
        return consul.Consul(host=host, port=port, connections_timeout=timeout)

    def address(self) -> str:
        """The address Consul's check and the load balancer reach this instance at."""
        if self._configured_address:
            return self._configured_address
        if self._bind_host not in _ANY_ADDRESS:
            return self._bind_host
        # The source address of the route to the agent is an address of this
        # host that the agent (and a load balancer beside it) can reach: a
        # container's address on its network, 127.0.0.1 next to a local agent.
        # Connecting a UDP socket picks the route without sending anything.
        family, kind, proto, _, target = socket.getaddrinfo(*self.consul_address, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.connect(target)
            return probe.getsockname()[0]

    def health_url(self, address: str | None = None) -> str:
        """The URL Consul's check calls (at `address`, this instance's own by default)."""
        address = address or self.address()
        host = f"[{address}]" if ":" in address else address
        return f"http://{host}:{self.port}/health"

    def register(self, passing: bool | None = None) -> None:
        """Register (or re-register) this instance and its health check, passing if `/health` answers 200
        (asked here unless the caller just asked it)."""
        address = self.address()
        health_url = self.health_url(address)
        check = consul.Check.http(health_url, interval=self._check_interval, deregister=self._deregister_after)
        # Consul runs a new check first after a random part of its interval (up
        # to 15s), and until then counts it critical. Asking /health once here
        # lets an instance that already answers take traffic at once.
        check["Status"] = "passing" if (_answers(health_url) if passing is None else passing) else "critical"
        with self._lock:
            if self._stopped.is_set():
                return  # deregistered for shutdown: never come back
            if not self._registered_once:
                self._remove_predecessors(address)
            self._client.agent.service.register(
                self.name,
                service_id=self.service_id,
                address=address,
                port=self.port,
                check=check,
                meta=dict(_advertised) or None,
            )
        logger.info(
            "%s %s in Consul at %s:%s (%s:%s, check every %s)",
            "registered again" if self._registered_once else "registered",
            self.service_id,
            *self.consul_address,
            address,
            self.port,
            self._check_interval,
        )
        self._registered_once = True

    def _remove_predecessors(self, address: str) -> None:
        """Deregister the agent's other entries of this service at this very address and port."""
        for service_id, service in self._client.agent.services().items():
            if (
                service_id != self.service_id
                and service.get("Service") == self.name
                and service.get("Address") == address
                and service.get("Port") == self.port
            ):
                self._client.agent.service.deregister(service_id)
                logger.info(
                    "deregistered %s, left at %s:%s by a predecessor that did not deregister",
                    service_id,
                    address,
                    self.port,
                )

    def known_to_agent(self, timeout: float | None = None) -> bool:
        """Whether the agent has this instance now (a restarted agent may have forgotten it)."""
        client = self._client if timeout is None else self._agent_client(timeout)
        return client.agent.service_definition(self.service_id) is not None

    def check_status(self) -> str | None:
        """The status the agent holds for this instance's check now; None while the agent does not know it."""
        check = self._client.agent.checks().get(self._check_id)
        return check["Status"] if check else None

    @property
    def _check_id(self) -> str:
        return f"service:{self.service_id}"  # the id Consul gives a service's only check

    def pass_again(self) -> bool:
        """If /health answers 200 now, have the agent count this critical instance passing at once; True if so."""
        if not _answers(self.health_url()):
            return False
        with self._lock:
            if self._stopped.is_set():
                return False
            self._client.agent.check.deregister(self._check_id)
        self.register(passing=True)
        logger.info("%s answers its /health again: passing in Consul at once", self.service_id)
        return True

    def start(self) -> None:
        """Keep this instance registered from a background thread."""
        threading.Thread(target=self._keep_registered, name="consul-registration", daemon=True).start()

    def _wait_until_serving(self) -> None:
        """Until this instance answers its own /health at all, healthy or not (or the wait runs out, or stop())."""
        host = "127.0.0.1" if self._bind_host in _ANY_ADDRESS else self._bind_host
        local_health = f"http://{host}:{self.port}/health"
        deadline = FIRST_REGISTRATION_WAIT_SECONDS
        while deadline > 0 and not self._stopped.is_set() and _health_status(local_health) is None:
            self._stopped.wait(0.1)
            deadline -= 0.1

    def _keep_registered(self) -> None:
        self._wait_until_serving()
        backoff = FIRST_RETRY_SECONDS
        failing = False
        while not self._stopped.is_set():
            try:
                status = self.check_status()
                if status is None:
                    self.register()
                elif status == "critical":
                    self.pass_again()
            except CONSUL_ERRORS as exc:
                # One warning per outage; the retries after it go to debug.
                (logger.debug if failing else logger.warning)(
                    "Consul at %s:%s not reachable for %s (%s); retrying in %.1fs",
                    *self.consul_address,
                    self.service_id,
                    exc,
                    backoff,
                )
                failing = True
                wait, backoff = backoff, min(backoff * 2, self.retry_interval)
            else:
                failing = False
                wait, backoff = STATUS_POLL_SECONDS, FIRST_RETRY_SECONDS
            self._stopped.wait(wait)

    def stop(self) -> bool:
        """Deregister and stop the background thread; True only for the call that did it."""
        with self._lock:
            if self._stopped.is_set():
                return False
            self._stopped.set()
            try:
                self._client.agent.service.deregister(self.service_id)
            except CONSUL_ERRORS as exc:
                logger.warning(
                    "could not deregister %s from Consul (%s); Consul removes it once its check "
                    "has been critical for %s",
                    self.service_id,
                    exc,
                    self._deregister_after,
                )
            else:
                logger.info("deregistered %s from Consul", self.service_id)
        return True


def _health_status(health_url: str) -> int | None:
    """The HTTP status `health_url` answers with now; None while nothing answers (not yet serving)."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an HTTP proxy
    try:
        with direct.open(health_url, timeout=API_TIMEOUT_SECONDS) as response:
            return response.status
    except urllib.error.HTTPError as exc:  # it answers, unhealthy (a 503 while the database is away)
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def _answers(health_url: str) -> bool:
    """Whether `health_url` answers 200 now (the workers may still be starting: wait for them)."""
    return _health_status(health_url) == 200


_current: Registration | None = None
# What the entry's meta tells the load balancer besides address and port (the
# live listener's port: messenger/live_listener.py), set before registering.
_advertised: dict[str, str] = {}
_current_lock = threading.Lock()
# The process that serves, as marked by the serving entry point; only it registers.
_serving_pid: int | None = None


def advertise(**meta: str) -> None:
    """Add to the service meta of this process's registration (set before it starts)."""
    _advertised.update(meta)


def mark_serving_process() -> None:
    """Called by the serving entry point (gunicorn's config): this process may register."""
    global _serving_pid
    _serving_pid = os.getpid()


def start_if_serving(config: Config) -> Registration | None:
    """`AppConfig.ready()`'s call: register only in the marked serving process."""
    if _serving_pid != os.getpid():
        return None  # a management command, a Celery worker, a test, or a forked gunicorn worker
    return start(config)


def start(config: Config) -> Registration | None:
    """Register this instance, once per process; None when CONSUL_SERVICE_NAME is unset."""
    global _current
    if not config.CONSUL_SERVICE_NAME:
        return None
    # Imported here: gunicorn's config imports this module before it may import prometheus_client.
    from core.http.observability import name_instance

    with _current_lock:
        if _current is None:
            _current = Registration(config)
            logger.info("registering this instance in Consul as %s", _current.service_id)
            # Log lines name the instance as Consul does; forked workers inherit the name.
            name_instance(_current.service_id)
            _current.start()
        return _current


def current() -> Registration | None:
    """This process's registration (a forked worker's copy of its master's), or None."""
    return _current


def stop() -> bool:
    """Deregister this instance; True only for the call that deregistered it."""
    return _current is not None and _current.stop()
