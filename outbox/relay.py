"""The relay: publish pending outbox rows to chat_queue with publisher confirms, then mark them sent.

`relay_pending` is what the Celery task (and `manage.py outbox --relay`) runs.
It publishes pending rows in outbox order (which is index order within a
conversation) with persistent delivery, and marks a row sent only once the
broker has confirmed it. Delivery is at least once: a relay killed between the
confirm and its commit resends that batch, and `message_id` lets a consumer
drop the repeat.

The broker connection is kombu's, as Celery's own is: the same broker URL,
transport and options (messenger/settings.py, CELERY_BROKER_URL). A batch is
published without waiting message by message; the broker's acks, nacks and
returns are then collected together, within CONFIRM_TIMEOUT.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from celery import current_app as app
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from kombu import Connection, Producer
from kombu.exceptions import OperationalError
from kombu.transport import pyamqp

from outbox import wire
from outbox.models import OutboxEvent
from outbox.services import pending_events

# The relay's limits: a broker that stops answering fails the batch, not the worker.
PUBLISH_CONNECT_TIMEOUT = 5.0
CONFIRM_TIMEOUT = 15.0

# Errors that leave a broker connection in an unknown state (TimeoutError is an OSError).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    *pyamqp.Transport.connection_errors,
    *pyamqp.Transport.channel_errors,
    OperationalError,
)


class RelayError(Exception):
    """The broker refused some events (nack, or unroutable); they stay pending for the next run."""


class Publisher:
    """A confirm-mode channel to the broker that publishes a batch and reports what was confirmed."""

    def __init__(self, url: str):
        self._connection: Connection = app.connection_for_write(
            url,
            connect_timeout=PUBLISH_CONNECT_TIMEOUT,
            # No broker call (declare, confirm_select, publish) waits forever.
            transport_options={"read_timeout": CONFIRM_TIMEOUT, "write_timeout": CONFIRM_TIMEOUT},
        )
        try:
            self._connection.connect()
            channel = self._connection.channel()
            wire.CHAT_QUEUE.bind(channel).declare()
            # Confirms collected per batch (below), not kombu's wait after every publish.
            channel.confirm_select()
            channel.events["basic_ack"].add(self._on_ack)
            channel.events["basic_nack"].add(self._on_nack)
            self._producer = Producer(channel, auto_declare=False, on_return=self._on_return)
        except Exception:
            self.close()
            raise
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

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        # Unroutable (the queue is gone): the broker acks it anyway, so remember the refusal.
        self._refused.add(message.properties.get("message_id"))

    def publish(self, events: list[OutboxEvent]) -> set[str]:
        """Publish `events` in order; wait for the broker's verdicts; return the confirmed event ids."""
        self._acked, self._refused = set(), set()
        for event in events:
            self._producer.publish(
                wire.encode_body(event.event_type, event.payload),
                exchange=wire.CHAT_QUEUE.exchange.name,
                routing_key=wire.CHAT_QUEUE.routing_key,
                content_type=wire.CONTENT_TYPE,
                content_encoding="utf-8",
                delivery_mode=wire.PERSISTENT,
                type=event.event_type,
                message_id=event.event_id,
                mandatory=True,
                retry=False,
                timeout=CONFIRM_TIMEOUT,
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
            except TimeoutError:
                continue
        return self._acked - self._refused

    def close(self) -> None:
        try:
            self._connection.release()
        except Exception:  # closing a broken connection is best effort
            self._connection.collect()


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
    holds per conversation.
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
        events = list(pending_events().select_for_update()[:batch_size])
        if not events:
            return 0
        confirmed = publisher.publish(events)
        refused = [event.event_id for event in events if event.event_id not in confirmed]
        OutboxEvent.objects.filter(event_id__in=confirmed).update(sent_at=timezone.now(), attempts=F("attempts") + 1)
        OutboxEvent.objects.filter(event_id__in=refused).update(attempts=F("attempts") + 1)
    if refused:
        raise RelayError(f"the broker refused {len(refused)} event(s), first {refused[0]}")
    return len(confirmed)
