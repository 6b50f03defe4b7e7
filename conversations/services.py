"""Services: every write the API makes, with its rules.

Views parse input and call one function here. Each function validates what the
database cannot, writes in one transaction, and raises `ServiceError`
subclasses with the contract's texts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from conversations import events
from conversations.models import Conversation, IdempotencyKey, Participant, User
from conversations.refusals import (
    CONVERSATION_NEEDS_TWO_USERS,
    IDEMPOTENCY_KEY_REUSED,
    PARTICIPANT_COUNT,
    UNKNOWN_PARTICIPANTS,
    conversation_exists,
    conversation_not_found,
    not_in_conversation,
    unknown_user,
)
from core.db import pg
from core.http.errors import InvalidInput, Unprocessable
from outbox.services import events_stored


def user_create(*, name: str) -> User:
    return User.objects.create(name=name)


def conversation_create(*, participant_ids: list[int]) -> Conversation:
    """Create the conversation of two distinct known users; one per pair, ever."""
    unique_ids = set(participant_ids)
    if len(unique_ids) != PARTICIPANT_COUNT or len(participant_ids) != PARTICIPANT_COUNT:
        raise InvalidInput(CONVERSATION_NEEDS_TWO_USERS)
    low, high = sorted(unique_ids)
    if User.objects.filter(pk__in=(low, high)).count() != PARTICIPANT_COUNT:
        raise InvalidInput(UNKNOWN_PARTICIPANTS)

    existing = Conversation.objects.filter(user_low_id=low, user_high_id=high).values_list("pk", flat=True).first()
    if existing is not None:
        raise conversation_exists(existing)
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
        raise conversation_exists(existing) from None
    return conversation


def _membership_error(conversation_id: int, user_id: int) -> Exception:
    """Why a user cannot act on a conversation: it does not exist, or they are not in it."""
    if not Conversation.objects.filter(pk=conversation_id).exists():
        return conversation_not_found(conversation_id)
    return not_in_conversation(user_id)


@dataclass(frozen=True)
class PostedMessage:
    id: int
    content: str
    index: int
    user_id: int
    username: str
    conversation_id: int
    inserted_at: datetime
    # True when an Idempotency-Key repeat returned the message posted before.
    replayed: bool = False


def _message_fingerprint(conversation_id: int, content: str) -> str:
    """What a keyed post asked for, so a repeat can be told from a different request."""
    return hashlib.sha256(json.dumps([conversation_id, content]).encode()).hexdigest()


def _idempotent_replay(*, user_id: int, key: str, fingerprint: str) -> PostedMessage | None:
    """The message a live key already produced; None for an unknown (or expired, now purged) key."""
    record = IdempotencyKey.objects.filter(user_id=user_id, key=key).select_related("message", "user").first()
    if record is None:
        return None
    if record.created_at < _idempotency_cutoff():
        record.delete()  # expired: forgotten, and the key is free for this post
        return None
    if record.fingerprint != fingerprint:
        raise Unprocessable(IDEMPOTENCY_KEY_REUSED)
    message = record.message
    return PostedMessage(id=message.pk, content=message.content, index=message.index, user_id=user_id,
                         username=record.user.name, conversation_id=message.conversation_id,
                         inserted_at=message.inserted_at, replayed=True)  # fmt: skip


def _idempotency_cutoff() -> datetime:
    return timezone.now() - timedelta(seconds=settings.IDEMPOTENCY_KEY_TTL)


def idempotency_keys_expired():
    """Keys older than IDEMPOTENCY_KEY_TTL: ignored by posts, and purged by `purge_idempotency_keys`."""
    return IdempotencyKey.objects.filter(created_at__lt=_idempotency_cutoff())


def idempotency_keys_purge() -> int:
    """Delete every expired key; returns how many went."""
    deleted, _ = idempotency_keys_expired().delete()
    return deleted


# The whole post as one statement, which also decides its refusals. When the
# user is a participant it takes the conversation's next index, writes the
# message and its `new_message` event, and returns the message; otherwise it
# writes nothing and its one row says why: no such user (no name), else no such
# conversation (`found` false), else not a participant. The conversation's
# counter row is locked from the UPDATE to the commit, so concurrent posters
# queue on it and indexes are gap-free; in autocommit that commit ends this one
# statement, with no client round trip in between. The timestamps are taken
# after the lock (clock_timestamp(), not now()), so they follow index order.
POST_MESSAGE_SQL = f"""
WITH bumped AS (
    UPDATE channels SET last_index = last_index + 1
    WHERE id = %(conversation)s
      AND EXISTS (SELECT 1 FROM users_channels WHERE channel_id = %(conversation)s AND user_id = %(user)s)
    RETURNING id, last_index, user_low_id, user_high_id
), message AS (
    INSERT INTO messages (content, user_id, channel_id, index, inserted_at)
    SELECT %(content)s::text, %(user)s, id, last_index, clock_timestamp() FROM bumped
    RETURNING id, index, inserted_at
), event AS (
    {events.new_message_insert_sql(rows="bumped", channel_id="id", user_id="%(user)s::bigint", index="last_index",
                                   participant_ids="jsonb_build_array(user_low_id, user_high_id)")}
)
SELECT message.id, message.index, message.inserted_at, (SELECT name FROM users WHERE id = %(user)s),
       message.id IS NOT NULL OR EXISTS (SELECT 1 FROM channels WHERE id = %(conversation)s)
FROM (SELECT) AS one LEFT JOIN message ON true
"""  # fmt: skip


def _message_post(*, conversation_id: int, user_id: int, content: str) -> PostedMessage:
    """Run POST_MESSAGE_SQL: the message and its event stored, or the refusal it decided raised."""
    with pg.prepared_cursor() as cursor:
        cursor.execute(POST_MESSAGE_SQL, {"conversation": conversation_id, "user": user_id, "content": content})
        message_id, index, inserted_at, username, found = cursor.fetchone()
    if username is None:
        raise unknown_user(user_id)
    if not found:
        raise conversation_not_found(conversation_id)
    if message_id is None:
        raise not_in_conversation(user_id)
    events_stored()
    return PostedMessage(id=message_id, content=content, index=index, user_id=user_id, username=username,
                         conversation_id=conversation_id, inserted_at=inserted_at)  # fmt: skip


def message_create(
    *, conversation_id: int, user_id: int, content: str, idempotency_key: str | None = None
) -> PostedMessage:
    """Store a message with the conversation's next index and its outbox event.

    Refuses, in this order: a `user_id` naming no user, no such conversation,
    a user outside it. Without a key the post is one statement
    (`POST_MESSAGE_SQL`, in autocommit) that decides all three and does the writes.

    With an `idempotency_key`, a repeat of the same post by the same user
    returns the first message (no second message, no second event); the key is
    stored in the same statement's transaction, so two concurrent repeats are
    decided by its unique constraint and the loser answers with the winner's message.
    """
    if idempotency_key is None:
        return _message_post(conversation_id=conversation_id, user_id=user_id, content=content)
    fingerprint = _message_fingerprint(conversation_id, content)
    replay = _idempotent_replay(user_id=user_id, key=idempotency_key, fingerprint=fingerprint)
    if replay is not None:
        return replay
    try:
        with transaction.atomic():
            message = _message_post(conversation_id=conversation_id, user_id=user_id, content=content)
            IdempotencyKey.objects.create(
                user_id=user_id, key=idempotency_key, fingerprint=fingerprint, message_id=message.id
            )
    except IntegrityError:
        # A concurrent post with the same key committed first (the whole
        # transaction, index included, rolled back): answer with its message.
        replay = _idempotent_replay(user_id=user_id, key=idempotency_key, fingerprint=fingerprint)
        if replay is None:
            raise
        return replay
    return message


def view_horizon_set(*, conversation_id: int, user: User, index: int) -> None:
    """Move the user's view horizon forward to `index`; it never moves back."""
    updated = Participant.objects.filter(conversation_id=conversation_id, user_id=user.pk).update(
        last_viewed_index=Greatest(F("last_viewed_index"), Value(index))
    )
    if not updated:
        raise _membership_error(conversation_id, user.pk)
