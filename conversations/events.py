"""The `new_message` event: its wire shape, its outbox row, and its relay to RabbitMQ.

Read top to bottom:

1. The event as the notifier consumes it: queue `chat_queue` (durable, no
   arguments: the notifier declares it exactly so, and any other declaration
   would clash), AMQP `type=new_message`, and a JSON body with exactly the
   contract's keys.
2. `record_new_message`: the message service calls it inside the message's
   transaction, so an event exists if and only if its message committed.
3. `relay_after_commit`: the request path's only contact with the broker. It
   wakes a background thread that enqueues the Celery relay task, so a post
   never waits on RabbitMQ; if the broker is down the enqueue fails, is logged,
   and the worker's periodic sweep sends the event later.
4. `relay_pending`: what the Celery task runs. It publishes pending rows in
   outbox order (which is index order within a conversation) with publisher
   confirms and persistent delivery, and marks a row sent only once the broker
   has confirmed it. Delivery is at least once: a relay killed between the
   confirm and its commit resends that batch, and `message_id` (the stable
   `<conversation>:<index>`) lets a consumer drop the repeat.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from urllib.parse import unquote, urlsplit

import amqp
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from conversations.models import OutboxEvent

logger = logging.getLogger(__name__)

QUEUE_NAME = "chat_queue"
NEW_MESSAGE = "new_message"
# The notifier's body, key for key and in this order (as the reference's JSON.stringify wrote it).
NEW_MESSAGE_KEYS = ("type", "channel_id", "user_id", "index", "participant_ids")
RELAY_TASK = "outbox.tasks.relay_outbox"

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
# The relay's limits: a broker that stops answering fails the batch, not the worker.
PUBLISH_CONNECT_TIMEOUT = 5.0
CONFIRM_TIMEOUT = 15.0


# --- 1. the event ------------------------------------------------------------

def new_message_payload(*, conversation_id: int, user_id: int, index: int, participant_ids: list[int]) -> dict:
    """The body the notifier expects, key for key."""
    return {
        "type": NEW_MESSAGE,
        "channel_id": conversation_id,
        "user_id": user_id,
        "index": index,
        "participant_ids": participant_ids,
    }


def new_message_event_id(conversation_id: int, index: int) -> str:
    """A stable id, so a consumer can drop a redelivered event."""
    return f"{conversation_id}:{index}"


def encode_body(payload: dict) -> bytes:
    """The JSON body: contract keys in contract order, no spaces (the stored jsonb reorders keys)."""
    return json.dumps({key: payload[key] for key in NEW_MESSAGE_KEYS}, separators=(",", ":")).encode()


def amqp_message(event: OutboxEvent) -> amqp.Message:
    return amqp.Message(
        encode_body(event.payload),
        content_type="application/json",
        delivery_mode=2,  # persistent: survives a broker restart in the durable queue
        type=event.event_type,
        message_id=event.event_id,
    )


# --- 2. the outbox row -------------------------------------------------------

def record_new_message(*, conversation_id: int, user_id: int, index: int, participant_ids: list[int]) -> OutboxEvent:
    """Write the event to the outbox; call inside the message's transaction."""
    return OutboxEvent.objects.create(
        event_id=new_message_event_id(conversation_id, index),
        event_type=NEW_MESSAGE,
        payload=new_message_payload(
            conversation_id=conversation_id, user_id=user_id, index=index, participant_ids=participant_ids
        ),
    )


def pending_backlog() -> tuple[int, OutboxEvent | None]:
    """How many events wait to be published, and the oldest of them."""
    pending = OutboxEvent.objects.filter(sent_at__isnull=True)
    return pending.count(), pending.order_by("id").first()


# --- 3. after commit: enqueue the relay, never waiting on the broker ----------

def broker_configured() -> bool:
    return bool(settings.CELERY_BROKER_URL)


def relay_after_commit() -> None:
    """Ask the relay to publish pending events; returns at once (registered with `on_commit`)."""
    if broker_configured():
        _kicker.kick()


def connect_for_enqueue(url: str):
    """A Celery broker connection for enqueueing: one short attempt to connect, confirmed publishes."""
    from messenger.celery import app

    connection = app.connection_for_write(
        url,
        connect_timeout=ENQUEUE_CONNECT_TIMEOUT,
        # Confirmed, so a connection the broker has closed since (a restart) fails loudly
        # and gets one fresh try, instead of swallowing the task; bounded, so a broker
        # that stops answering frees this thread.
        transport_options={
            "confirm_publish": True, "read_timeout": ENQUEUE_CONNECT_TIMEOUT, "write_timeout": ENQUEUE_CONNECT_TIMEOUT,
        },
    )
    connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=ENQUEUE_CONNECT_TIMEOUT)
    return connection


def enqueue_relay(connection=None) -> None:
    """Send one relay task to Celery's queue, without retrying: the periodic sweep is the retry."""
    from messenger.celery import app

    if connection is None:
        with connect_for_enqueue(settings.CELERY_BROKER_URL) as connection:
            return enqueue_relay(connection)
    app.send_task(RELAY_TASK, connection=connection, retry=False, expires=ENQUEUE_EXPIRES, expiration=ENQUEUE_EXPIRES)


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
        self._connection = None
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
                time.sleep(ENQUEUE_MIN_INTERVAL)
            except Exception as exc:
                self._close()
                logger.warning(
                    "outbox: could not enqueue the relay (%s); the periodic sweep will send pending events", exc
                )
                # Kicks meanwhile fold into one try after the pause: no retry storm, no log flood.
                time.sleep(ENQUEUE_PAUSE_AFTER_FAILURE)

    def _send(self) -> None:
        url = settings.CELERY_BROKER_URL
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


# --- 4. the relay: publish with confirms, then mark sent ----------------------

class RelayError(Exception):
    """The broker refused some events (nack, or unroutable); they stay pending for the next run."""


class Publisher:
    """A confirm-mode channel to the broker that publishes a batch and reports what was confirmed."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        self._connection = amqp.Connection(
            host=f"{parts.hostname}:{parts.port or 5672}",
            userid=unquote(parts.username or "guest"),
            password=unquote(parts.password or "guest"),
            virtual_host=unquote(parts.path[1:]) or "/",
            connect_timeout=PUBLISH_CONNECT_TIMEOUT,
            read_timeout=CONFIRM_TIMEOUT,  # no broker call (declare, confirm_select) waits forever
            write_timeout=CONFIRM_TIMEOUT,
        )
        self._connection.connect()
        try:
            self._channel = self._connection.channel()
            self._channel.queue_declare(QUEUE_NAME, durable=True, auto_delete=False)
            self._channel.confirm_select()
        except Exception:
            self.close()
            raise
        self._channel.events["basic_ack"].add(self._on_ack)
        self._channel.events["basic_nack"].add(self._on_nack)
        self._channel.events["basic_return"].add(self._on_return)
        self._last_tag = 0  # delivery tags count from 1 on a confirm-mode channel
        self._waiting: dict[int, str] = {}
        self._acked: set[str] = set()
        self._refused: set[str] = set()

    def _settle(self, tag: int, multiple: bool, into: set[str]) -> None:
        for settled in [t for t in self._waiting if t == tag or (multiple and t <= tag)]:
            into.add(self._waiting.pop(settled))

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, self._acked)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, self._refused)

    def _on_return(self, exc, exchange, routing_key, message) -> None:
        # Unroutable (the queue is gone): the broker acks it anyway, so remember the refusal.
        self._refused.add(message.properties.get("message_id"))

    def publish(self, events: list[OutboxEvent]) -> set[str]:
        """Publish `events` in order; wait for the broker's verdicts; return the confirmed event ids."""
        self._acked, self._refused = set(), set()
        for event in events:
            self._channel.basic_publish(
                amqp_message(event), exchange="", routing_key=QUEUE_NAME, mandatory=True, timeout=CONFIRM_TIMEOUT
            )
            self._last_tag += 1
            self._waiting[self._last_tag] = event.event_id
        deadline = time.monotonic() + CONFIRM_TIMEOUT
        while self._waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"outbox: no confirm from the broker within {CONFIRM_TIMEOUT}s")
            try:
                self._connection.drain_events(timeout=remaining)
            except socket.timeout:
                continue
        return self._acked - self._refused

    def close(self) -> None:
        try:
            self._connection.close()
        except Exception:  # closing a broken connection is best effort
            self._connection.collect()


# Errors that leave a broker connection in an unknown state.
CONNECTION_ERRORS = (OSError, amqp.exceptions.AMQPError)

# One publisher per thread of a process, kept between relay runs, replaced after any failure.
_local = threading.local()


def _kept_publisher(url: str) -> Publisher | None:
    kept = getattr(_local, "publisher", None)
    if kept is not None and kept[:2] == (os.getpid(), url):
        return kept[2]
    return None


def _keep_publisher(url: str, publisher: Publisher) -> None:
    _local.publisher = (os.getpid(), url, publisher)


def close_publisher() -> None:
    """Close this thread's kept broker connection, if any (the next relay opens a new one)."""
    kept = getattr(_local, "publisher", None)
    if kept is not None and kept[0] == os.getpid():  # a forked child leaves its parent's socket alone
        kept[2].close()
    _local.publisher = None


def relay_pending(*, batch_size: int | None = None, broker_url: str | None = None) -> int:
    """Publish every pending outbox event, oldest first; return how many the broker confirmed.

    Each batch is one transaction: lock the oldest pending rows, publish them,
    wait for the confirms, mark the confirmed rows sent, commit. The lock is
    FOR UPDATE without SKIP LOCKED on purpose: a second relay waits for the
    first one's batch instead of publishing later events of the same
    conversation ahead of it, so two relays never send a row twice and order
    holds per conversation. (SQLite serialises the transactions instead.)
    """
    url = broker_url or settings.CELERY_BROKER_URL
    if not url:
        raise RelayError("no broker configured (AMQPHOST is unset)")
    batch_size = batch_size or settings.EVENTS_RELAY_BATCH
    sent = 0
    while True:
        publisher = _kept_publisher(url)
        reused = publisher is not None
        try:
            if publisher is None:
                publisher = Publisher(url)
                _keep_publisher(url, publisher)
            while batch := _relay_batch(publisher, batch_size):
                sent += batch
            return sent
        except RelayError:
            close_publisher()  # the next run declares chat_queue again, in case it was deleted
            raise
        except CONNECTION_ERRORS:
            close_publisher()
            if not reused:
                raise
            # The kept connection had gone stale (broker restarted since the last run): one fresh try.


def _relay_batch(publisher: Publisher, batch_size: int) -> int:
    """Publish and mark one batch in one transaction; return how many were confirmed (0: none pending)."""
    with transaction.atomic():
        events = list(OutboxEvent.objects.select_for_update().filter(sent_at__isnull=True).order_by("id")[:batch_size])
        if not events:
            return 0
        confirmed = publisher.publish(events)
        refused = [event.event_id for event in events if event.event_id not in confirmed]
        OutboxEvent.objects.filter(event_id__in=confirmed).update(sent_at=timezone.now(), attempts=F("attempts") + 1)
        OutboxEvent.objects.filter(event_id__in=refused).update(attempts=F("attempts") + 1)
    if refused:
        raise RelayError(f"the broker refused {len(refused)} event(s), first {refused[0]}")
    return len(confirmed)
