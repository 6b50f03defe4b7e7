"""Celery tasks. Each takes no arguments (the outbox holds the work) and is safe to run twice.

`relay_outbox` is enqueued after a message commits (`events.relay_after_commit`)
and every `EVENTS_SWEEP_INTERVAL` by beat. It is acked late, so a worker killed
mid-relay leaves the task to run again, and it retries with exponential backoff
while the broker or the database is unreachable; the sweep covers the rest.
"""

from celery import shared_task
from django.db import DatabaseError

from conversations import events

RETRY_ON = (*events.CONNECTION_ERRORS, DatabaseError, events.RelayError)


@shared_task(
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=RETRY_ON,
    retry_backoff=2,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=5,
)
def relay_outbox() -> int:
    """Publish every pending outbox event to `chat_queue`; returns how many the broker confirmed."""
    return events.relay_pending()
