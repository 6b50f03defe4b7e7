"""Services: every write the API makes, with its rules.

Views parse input and call one function here. Each function validates what the
database cannot, writes in one transaction, and raises `ServiceError`
subclasses with the contract's texts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import IntegrityError, connection, transaction
from django.db.models import F, Value
from django.db.models.functions import Greatest

from conversations import events
from conversations.errors import InvalidInput, NotFound
from conversations.models import Conversation, Message, Participant, User

PARTICIPANT_COUNT = 2


def user_create(*, name: str) -> User:
    return User.objects.create(name=name)


def _existing_conversation_error(conversation_id: int) -> InvalidInput:
    return InvalidInput(f"A conversation between these two users already exists with id {conversation_id}")


def conversation_create(*, participant_ids: list[int]) -> Conversation:
    """Create the conversation of two distinct known users; one per pair, ever."""
    unique_ids = set(participant_ids)
    if len(unique_ids) != PARTICIPANT_COUNT or len(participant_ids) != PARTICIPANT_COUNT:
        raise InvalidInput(f"Conversation must have {PARTICIPANT_COUNT} unique users")
    low, high = sorted(unique_ids)
    if User.objects.filter(pk__in=(low, high)).count() != PARTICIPANT_COUNT:
        raise InvalidInput("participant_ids provided did not match to two known participants")

    existing = Conversation.objects.filter(user_low_id=low, user_high_id=high).values_list("pk", flat=True).first()
    if existing is not None:
        raise _existing_conversation_error(existing)
    try:
        with transaction.atomic():
            conversation = Conversation.objects.create(user_low_id=low, user_high_id=high)
            Participant.objects.bulk_create(
                [Participant(conversation=conversation, user_id=user_id) for user_id in (low, high)]
            )
    except IntegrityError:
        # Another request created the same pair between our check and insert:
        # the database's unique constraint decided; report the winner.
        existing = Conversation.objects.filter(user_low_id=low, user_high_id=high).values_list("pk", flat=True).first()
        if existing is None:
            raise
        raise _existing_conversation_error(existing) from None
    return conversation


def _not_in_conversation(user_id: int) -> InvalidInput:
    return InvalidInput(f"User with id {user_id} is not in conversation")


def conversation_not_found(conversation_id: int) -> NotFound:
    return NotFound(f"Conversation with id {conversation_id} not found")


def _membership_error(conversation_id: int, user_id: int) -> Exception:
    """Why a user cannot act on a conversation: it does not exist, or they are not in it."""
    if not Conversation.objects.filter(pk=conversation_id).exists():
        return conversation_not_found(conversation_id)
    return _not_in_conversation(user_id)


@dataclass(frozen=True)
class PostedMessage:
    id: int
    content: str
    index: int
    user_id: int
    username: str
    conversation_id: int
    inserted_at: datetime


# Takes the next index and returns the pair, in one statement; the counter row
# stays locked until commit, so concurrent posters queue on it and indexes are
# gap-free. Works on PostgreSQL and SQLite (3.35+).
_NEXT_INDEX_SQL = (
    "UPDATE channels SET last_index = last_index + 1 WHERE id = %s "
    "RETURNING last_index, user_low_id, user_high_id"
)


def message_create(*, conversation_id: int, user: User, content: str) -> PostedMessage:
    """Store a message with the conversation's next index and its outbox event."""
    if not Participant.objects.filter(conversation_id=conversation_id, user_id=user.pk).exists():
        raise _membership_error(conversation_id, user.pk)

    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(_NEXT_INDEX_SQL, [conversation_id])
            row = cursor.fetchone()
        if row is None:  # deleted since the membership check
            raise conversation_not_found(conversation_id)
        index, low, high = row
        message = Message.objects.create(
            content=content, user_id=user.pk, conversation_id=conversation_id, index=index
        )
        events.record_new_message(
            conversation_id=conversation_id, user_id=user.pk, index=index, participant_ids=[low, high]
        )
        transaction.on_commit(events.relay_after_commit)

    return PostedMessage(
        id=message.pk,
        content=content,
        index=index,
        user_id=user.pk,
        username=user.name,
        conversation_id=conversation_id,
        inserted_at=message.inserted_at,
    )


def view_horizon_set(*, conversation_id: int, user: User, index: int) -> None:
    """Move the user's view horizon forward to `index`; it never moves back."""
    updated = Participant.objects.filter(conversation_id=conversation_id, user_id=user.pk).update(
        last_viewed_index=Greatest(F("last_viewed_index"), Value(index))
    )
    if not updated:
        raise _membership_error(conversation_id, user.pk)
