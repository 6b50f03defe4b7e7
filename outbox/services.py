"""Writing to the outbox, and what waits in it."""

from __future__ import annotations

from typing import Any

from outbox.models import OutboxEvent


def event_record(*, event_id: str, event_type: str, payload: dict[str, Any]) -> OutboxEvent:
    """Store an event to publish; call inside its cause's transaction, so both commit or neither does."""
    return OutboxEvent.objects.create(event_id=event_id, event_type=event_type, payload=payload)


def pending_events():
    """Events stored but not yet confirmed by the broker, oldest first."""
    return OutboxEvent.objects.filter(sent_at__isnull=True).order_by("id")


def pending_backlog() -> tuple[int, OutboxEvent | None]:
    """How many events wait to be published, and the oldest of them."""
    pending = pending_events()
    return pending.count(), pending.first()
