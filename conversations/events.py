"""The `new_message` event: its wire shape and its place in the outbox.

`record_new_message` is called by the message service inside the transaction
that stores the message, so the event exists if and only if the message
committed. Publishing the outbox to RabbitMQ happens after commit (see
`conversations.tasks`).
"""

from __future__ import annotations

from conversations.models import OutboxEvent

QUEUE_NAME = "chat_queue"
NEW_MESSAGE = "new_message"


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
    return OutboxEvent.objects.create(
        event_id=new_message_event_id(conversation_id, index),
        event_type=NEW_MESSAGE,
        payload=new_message_payload(
            conversation_id=conversation_id, user_id=user_id, index=index, participant_ids=participant_ids
        ),
    )


def relay_after_commit() -> None:
    """Ask the relay to publish pending events once the current transaction commits."""
    # Wired to the Celery relay by the events integration; with no broker
    # configured, events simply wait in the outbox.
    return None
