"""The `new_message` event, declared once: what the notifier receives on `chat_queue` after a post.

The body has exactly the contract's keys, in this order (as the reference's
JSON.stringify wrote them); the AMQP `type` is `new_message`; the event id is
the stable `<conversation>:<index>`, so a consumer can drop a redelivery.

The message service calls `record_new_message` inside the message's
transaction, so an event exists if and only if its message committed, and
registers `relay_after_commit` with `on_commit`. Storing, relaying and the
broker are the outbox's (outbox/).
"""

from __future__ import annotations

from outbox import wire
from outbox.kicker import relay_after_commit
from outbox.models import OutboxEvent
from outbox.services import event_record

__all__ = ("NEW_MESSAGE", "NEW_MESSAGE_KEYS", "new_message_payload", "record_new_message", "relay_after_commit")

NEW_MESSAGE = "new_message"
NEW_MESSAGE_KEYS = ("type", "channel_id", "user_id", "index", "participant_ids")
wire.declare_event_type(NEW_MESSAGE, keys=NEW_MESSAGE_KEYS)


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


def record_new_message(*, conversation_id: int, user_id: int, index: int, participant_ids: list[int]) -> OutboxEvent:
    """Write the event to the outbox; call inside the message's transaction."""
    return event_record(
        event_id=new_message_event_id(conversation_id, index),
        event_type=NEW_MESSAGE,
        payload=new_message_payload(
            conversation_id=conversation_id, user_id=user_id, index=index, participant_ids=participant_ids
        ),
    )
