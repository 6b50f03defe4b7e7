"""The `new_message` event, declared once: what the notifier receives on `chat_queue` after a post.

The body has exactly the contract's keys, in this order (as the reference's
JSON.stringify wrote them); the AMQP `type` is `new_message`; the event id is
the stable `<conversation>:<index>`, so a consumer can drop a redelivery.

The message service's statement stores the event with the message
(`new_message_insert_sql`, through the outbox's `event_insert_sql`), so an
event exists if and only if its message committed. Storing, relaying and the
broker are the outbox's (outbox/).
"""

from __future__ import annotations

from outbox import wire
from outbox.services import event_insert_sql

NEW_MESSAGE = "new_message"
NEW_MESSAGE_KEYS = ("type", "channel_id", "user_id", "index", "participant_ids")
wire.declare_event_type(NEW_MESSAGE, keys=NEW_MESSAGE_KEYS)


def new_message_insert_sql(*, rows: str, channel_id: str, user_id: str, index: str, participant_ids: str) -> str:
    """SQL storing a `new_message` event per row of `rows`; each argument an SQL expression over those rows.

    The body is built key by key from NEW_MESSAGE_KEYS; its event id is `<channel_id>:<index>`.
    """
    values = {"type": f"'{NEW_MESSAGE}'::text", "channel_id": channel_id, "user_id": user_id, "index": index,
              "participant_ids": participant_ids}  # fmt: skip
    payload = "jsonb_build_object(" + ", ".join(f"'{key}', {values[key]}" for key in NEW_MESSAGE_KEYS) + ")"
    return event_insert_sql(
        rows=rows, event_id=f"{channel_id} || ':' || {index}", event_type=NEW_MESSAGE, payload=payload
    )
