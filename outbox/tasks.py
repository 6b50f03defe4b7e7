"""Celery tasks. Each takes no arguments (the outbox holds the work) and is safe to run twice.

`relay_outbox` is enqueued after a commit (`outbox.kicker.relay_after_commit`)
and every `EVENTS_SWEEP_INTERVAL` by beat. It is acked late (CELERY_TASK_ACKS_LATE
and CELERY_TASK_REJECT_ON_WORKER_LOST in messenger/settings.py), so a worker
killed mid-relay leaves the task to run again, and it retries with exponential
backoff while the broker or the database is unreachable; the sweep covers the rest.
"""

from celery import shared_task
from django.db import DatabaseError

from outbox import relay

RETRY_ON = (*relay.CONNECTION_ERRORS, DatabaseError, relay.RelayError)


@shared_task(
    autoretry_for=RETRY_ON,
    retry_backoff=2,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=5,
)
def relay_outbox() -> int:
    """Publish every pending outbox event to `chat_queue`; returns how many the broker confirmed."""
    return relay.relay_pending()
