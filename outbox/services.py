"""Writing to the outbox, and what waits in it.

An event is stored by the statement that stores its cause, so both commit or
neither does: `event_insert_sql` is that statement's part which inserts the
outbox rows, the one place an event row is written. Running it registers the
relay's kick on commit (`events_stored`), as Sentry's outbox row does in its
own `save()`, so no caller can store an event and forget to relay it.
"""

from __future__ import annotations

from django.db import transaction

from outbox.models import OutboxEvent


def event_insert_sql(*, rows: str, event_id: str, event_type: str, payload: str) -> str:
    """SQL storing one event for each row of `rows` (a CTE of the same statement, or a table).

    `event_id` and `payload` are SQL expressions over those rows (the payload a
    jsonb value); `event_type` is the event's declared type. The caller runs
    the statement and then `events_stored()`, in the same transaction.
    """
    table = OutboxEvent._meta.db_table
    return (
        f"INSERT INTO {table} (event_id, event_type, payload, created_at, attempts) "
        f"SELECT {event_id}, '{event_type}', {payload}, clock_timestamp(), 0 FROM {rows}"
    )


def events_stored() -> None:
    """The statement of `event_insert_sql` ran: kick the relay when its transaction commits (at once in autocommit)."""
    # Imported here: the kicker imports the relay task, and the relay reads this module's backlog.
    from outbox.kicker import relay_after_commit

    transaction.on_commit(relay_after_commit)


def pending_events():
    """Events stored but not yet confirmed by the broker, oldest first."""
    return OutboxEvent.objects.filter(sent_at__isnull=True).order_by("id")


def pending_backlog() -> tuple[int, OutboxEvent | None]:
    """How many events wait to be published, and the oldest of them."""
    pending = pending_events()
    return pending.count(), pending.first()
