"""After a commit: ask the Celery worker to relay, never making the request wait on the broker.

`relay_after_commit` is the request path's only contact with the broker. It
wakes one background thread per process, which enqueues the relay task; if the
broker is down the enqueue fails, is logged, and the worker's periodic sweep
(beat, every EVENTS_SWEEP_INTERVAL) sends the event later.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from celery import current_app as app
from django.conf import settings
from kombu import Connection

from outbox.tasks import relay_outbox

logger = logging.getLogger(__name__)

# The request path's enqueue gives up quickly; the periodic sweep is the fallback.
ENQUEUE_CONNECT_TIMEOUT = 2.0
ENQUEUE_PAUSE_AFTER_FAILURE = 1.0
# At most one relay task per process per this interval. A task relays everything pending, so
# kicks meanwhile fold into the next one: under load the worker runs a few tasks a second, not
# one per post (each costs it a few milliseconds of CPU); an idle service still relays at once.
ENQUEUE_MIN_INTERVAL = 0.1
# A kick still queued after this long is dropped unrun, by RabbitMQ (message TTL) and by the
# worker: the sweep has covered it by then, and a stopped or absent worker leaves no pile.
ENQUEUE_EXPIRES = 300.0


def broker_configured() -> bool:
    return bool(settings.CELERY_BROKER_URL)


def _broker_url() -> str:
    url = settings.CELERY_BROKER_URL
    if not url:
        raise RuntimeError("no broker configured (AMQPHOST is unset)")
    return url


def relay_after_commit() -> None:
    """Ask the relay to publish pending events; returns at once (registered with `on_commit`)."""
    if broker_configured():
        _kicker.kick()


def connect_for_enqueue(url: str) -> Connection:
    """A Celery broker connection for enqueueing: one short attempt to connect, confirmed publishes."""
    connection = app.connection_for_write(
        url,
        connect_timeout=ENQUEUE_CONNECT_TIMEOUT,
        # Confirmed, so a connection the broker has closed since (a restart) fails loudly
        # and gets one fresh try, instead of swallowing the task; bounded, so a broker
        # that stops answering frees this thread.
        transport_options={
            "confirm_publish": True,
            "read_timeout": ENQUEUE_CONNECT_TIMEOUT,
            "write_timeout": ENQUEUE_CONNECT_TIMEOUT,
        },
    )
    connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=ENQUEUE_CONNECT_TIMEOUT)
    return connection


def enqueue_relay(connection: Connection | None = None) -> None:
    """Send one relay task to Celery's queue, without retrying: the periodic sweep is the retry."""
    if connection is None:
        with connect_for_enqueue(_broker_url()) as connection:
            return enqueue_relay(connection)
    app.send_task(
        relay_outbox.name, connection=connection, retry=False, expires=ENQUEUE_EXPIRES, expiration=ENQUEUE_EXPIRES
    )


class _RelayKicker:
    """One daemon thread per process that turns kicks into relay tasks.

    Kicks that arrive while a task is being enqueued, or within
    ENQUEUE_MIN_INTERVAL of the last one, fold into one more task (each relay
    sends everything pending), so a burst of posts costs a few tasks, and a
    slow or dead broker only ever holds up this thread. The thread
    keeps its broker connection between kicks rather than opening one per post.
    """

    def __init__(self) -> None:
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._connection: Connection | None = None
        self._url: str | None = None

    def kick(self) -> None:
        with self._lock:
            # A forked child (gunicorn, Celery prefork) inherits no threads: start its own,
            # and leave the parent's connection (a shared socket) alone.
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._wake = threading.Event()
                self._pid = os.getpid()
                self._connection = None
                self._thread = threading.Thread(target=self._run, args=(self._wake,), name="outbox-kicker", daemon=True)
                self._thread.start()
            self._wake.set()

    def _run(self, wake: threading.Event) -> None:
        while True:
            wake.wait()
            wake.clear()
            try:
                self._send()
                time.sleep(ENQUEUE_MIN_INTERVAL)  # the rate limit itself, not a wait for something
            except Exception as exc:
                self._close()
                logger.warning(
                    "outbox: could not enqueue the relay (%s); the periodic sweep will send pending events", exc
                )
                # Kicks meanwhile fold into one try after the pause: no retry storm, no log flood.
                time.sleep(ENQUEUE_PAUSE_AFTER_FAILURE)

    def _send(self) -> None:
        url = _broker_url()
        if self._connection is not None and self._url == url:
            try:
                enqueue_relay(self._connection)
                return
            except Exception:
                self._close()  # stale (the broker restarted since): one fresh try below
        self._connection, self._url = connect_for_enqueue(url), url
        enqueue_relay(self._connection)

    def _close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.release()
            except Exception:  # closing a broken connection is best effort
                pass
        self._connection = None


_kicker = _RelayKicker()
