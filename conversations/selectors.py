"""Selectors: every read the API makes, one query per page where possible."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Case, F, Q, When

from conversations.models import Conversation, Message, User
from core.db import pg


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


# --- the same pages as JSON text, built by PostgreSQL (conversations.pg) -------------


@dataclass(frozen=True)
class JsonPage:
    """A page as the JSON text of its items (comma-separated objects, no brackets).

    `items` holds at most `limit` objects, exactly as the API's renderer writes
    them; `more` says a further page exists, and `last` is the cursor (id or
    index) of the page's last item, for its `next` link.
    """

    items: str
    more: bool
    last: int | None


_MESSAGES_PAGE_SQL = f"""
SELECT string_agg(
           '{{"id":' || p.id || ',"content":' || {pg.json_string("p.content")}
           || ',"user_id":' || p.user_id || ',"channel_id":' || p.channel_id || ',"index":' || p.index
           || ',"inserted_at":"' || {pg.json_timestamp("p.inserted_at")}
           || '","username":' || {pg.json_string("u.name")} || '}}',
           ',' ORDER BY p.index) FILTER (WHERE p.n <= %(limit)s),
       count(*),
       max(p.index) FILTER (WHERE p.n <= %(limit)s),
       -- Only an empty page asks whether the conversation exists at all.
       count(*) > 0 OR EXISTS (SELECT 1 FROM channels WHERE id = %(conversation)s)
FROM (
    SELECT m.id, m.content, m.user_id, m.channel_id, m.index, m.inserted_at,
           row_number() OVER (ORDER BY m.index) AS n
    FROM messages m
    WHERE m.channel_id = %(conversation)s AND m.index > %(after)s
    ORDER BY m.index
    LIMIT %(limit)s + 1
) AS p
JOIN users u ON u.id = p.user_id
"""


def _json_page(sql: str, parameters: dict) -> JsonPage | None:
    """Run a page statement: its items, row count, last cursor, and whether its owner exists (else None)."""
    with pg.prepared_cursor() as cursor:
        cursor.execute(sql, parameters)
        items, count, last, found = cursor.fetchone()
    if not found:
        return None
    return JsonPage(items=items or "", more=count > parameters["limit"], last=last)


def messages_page_json(*, conversation_id: int, after_index: int, limit: int) -> JsonPage | None:
    """`messages_for_conversation` as JSON text, in one statement; None when the conversation does not exist."""
    return _json_page(_MESSAGES_PAGE_SQL, {"conversation": conversation_id, "after": after_index, "limit": limit})


# One ordered index scan per side of the pair, (user_low_id, id) and
# (user_high_id, id), merged: a page costs the same for a user with 3
# conversations or 30,000. A conversation never has the same user on both sides.
_CONVERSATIONS_PAGE_SQL = f"""
SELECT string_agg(
           '{{"id":' || p.id || ',"inserted_at":"' || {pg.json_timestamp("p.inserted_at")}
           || '","name":' || {pg.json_string("u.name")} || '}}',
           ',' ORDER BY p.id) FILTER (WHERE p.n <= %(limit)s),
       count(p.id),
       max(p.id) FILTER (WHERE p.n <= %(limit)s),
       EXISTS (SELECT 1 FROM users WHERE id = %(user)s)
FROM (
    SELECT c.id, c.inserted_at, c.other, row_number() OVER (ORDER BY c.id) AS n
    FROM (
        (SELECT id, inserted_at, user_high_id AS other FROM channels
         WHERE user_low_id = %(user)s AND id > %(after)s ORDER BY id LIMIT %(limit)s + 1)
        UNION ALL
        (SELECT id, inserted_at, user_low_id AS other FROM channels
         WHERE user_high_id = %(user)s AND id > %(after)s ORDER BY id LIMIT %(limit)s + 1)
    ) AS c
    ORDER BY c.id
    LIMIT %(limit)s + 1
) AS p
JOIN users u ON u.id = p.other
"""


def conversations_page_json(*, user_id: int, after_id: int, limit: int) -> JsonPage | None:
    """`conversations_for_user` as JSON text, in one statement; None when the user does not exist."""
    return _json_page(_CONVERSATIONS_PAGE_SQL, {"user": user_id, "after": after_id, "limit": limit})
