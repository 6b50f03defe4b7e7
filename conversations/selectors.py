"""Selectors: every read the API makes, one query per page where possible."""

from __future__ import annotations

from django.db.models import Case, F, Q, When

from conversations.models import Conversation, Message, User


def users_page(*, after_id: int, limit: int) -> list[User]:
    return list(User.objects.filter(pk__gt=after_id).order_by("pk")[:limit])


def conversations_for_user(*, user_id: int, after_id: int, limit: int) -> list[dict]:
    """The user's conversations by id, each named after the other participant."""
    rows = (
        Conversation.objects.filter(Q(user_low_id=user_id) | Q(user_high_id=user_id), pk__gt=after_id)
        .annotate(name=Case(When(user_low_id=user_id, then=F("user_high__name")), default=F("user_low__name")))
        .order_by("pk")
        .values("id", "inserted_at", "name")[:limit]
    )
    return list(rows)


def messages_for_conversation(*, conversation_id: int, after_index: int, limit: int) -> list[dict]:
    """One page of a conversation's messages in index order.

    Served by the unique (channel_id, index) index: the cost of a page does not
    depend on how long the conversation is.
    """
    rows = (
        Message.objects.filter(conversation_id=conversation_id, index__gt=after_index)
        .order_by("index")
        .values("id", "content", "user_id", "conversation_id", "index", "inserted_at", "user__name")[:limit]
    )
    return list(rows)


def conversation_exists(conversation_id: int) -> bool:
    return Conversation.objects.filter(pk=conversation_id).exists()
