"""Selectors: every read the API makes, one query per page.

The two hot reads, a page of messages and a page of the caller's
conversations, are one function each (`messages_page_read`, `conversations_page_read`)
that also decides their refusals: an unknown caller, a reader outside the
conversation (READS_REQUIRE_MEMBER), no such conversation. Each is one
statement (prepared, core.db.pg) that does all of it and writes the page's
JSON, which the view hands through: the browsable API and `?format=json`
render the same page.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings

from conversations import presenters
from conversations.models import User
from conversations.refusals import MISSING_USER_ID, conversation_not_found, not_in_conversation, unknown_user
from core.db import pg
from core.http.errors import InvalidInput


def users_page(*, after_id: int, limit: int) -> list[User]:
    return list(User.objects.filter(pk__gt=after_id).order_by("pk")[:limit])


# --- the hot pages: JSON text, refusals decided where the page is read -------------


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


@dataclass(frozen=True)
class PageRead:
    """A hot page's one statement, its parameters, and what its one row means.

    Run here through Django's connection (`run`)
    or by the live listener on its asyncio connections (conversations.live.reads):
    one statement and one reading of its row, whichever connection carries it.
    `interpret` raises the page's refusals.
    """

    sql: str
    params: dict
    interpret: Callable[[tuple], JsonPage]


def run(read: PageRead) -> JsonPage:
    """The page `read` gives, through Django's connection."""
    with pg.prepared_cursor() as cursor:
        cursor.execute(read.sql, read.params)
        return read.interpret(cursor.fetchone())


# Refusals the page statement can return, in the order the API checks them.
_UNKNOWN_USER, _NOT_A_PARTICIPANT = "unknown user", "not a participant"

# The caller (when a User-Id was sent) must exist and, members only, be in the
# conversation: both are decided first, once (an InitPlan), and a refused read
# touches no message. `found` is asked only of an empty page. Each row's author
# is one index lookup (LATERAL ... LIMIT 1 keeps it a lookup): joined plainly,
# the planner hashes the whole users table once it has a few thousand rows,
# 1-5 ms of PostgreSQL's CPU for a page of 100 (EXPLAIN ANALYZE), against 0.25.
MESSAGES_PAGE_SQL = f"""
WITH gate AS (
    SELECT CASE
        WHEN %(user)s::bigint IS NOT NULL AND NOT EXISTS (SELECT 1 FROM users WHERE id = %(user)s::bigint)
            THEN '{_UNKNOWN_USER}'
        WHEN %(members_only)s::boolean AND NOT EXISTS (
                SELECT 1 FROM users_channels WHERE channel_id = %(conversation)s AND user_id = %(user)s::bigint)
            THEN '{_NOT_A_PARTICIPANT}'
    END AS refusal
)
SELECT (SELECT refusal FROM gate),
       string_agg({presenters.MESSAGE_LIST_ITEM.json_sql("p", username="u.name")}, ',' ORDER BY p.index) FILTER (WHERE p.n <= %(limit)s),
       count(*),
       max(p.index) FILTER (WHERE p.n <= %(limit)s),
       count(*) > 0 OR EXISTS (SELECT 1 FROM channels WHERE id = %(conversation)s)
FROM (
    SELECT m.id, m.content, m.user_id, m.channel_id, m.index, m.inserted_at,
           row_number() OVER (ORDER BY m.index) AS n
    FROM messages m
    WHERE m.channel_id = %(conversation)s AND m.index > %(after)s AND (SELECT refusal FROM gate) IS NULL
    ORDER BY m.index
    LIMIT %(limit)s + 1
) AS p
JOIN LATERAL (SELECT name FROM users WHERE id = p.user_id LIMIT 1) AS u ON true
"""


def _sent(user_id: int | None) -> int:
    """The caller's id where a refusal names it: the statement refuses a user only when one was sent."""
    assert user_id is not None
    return user_id


def messages_page_read(*, conversation_id: int, after_index: int, limit: int, user_id: int | None) -> PageRead:
    """One page of a conversation's messages in index order, as JSON text.

    `user_id` is the caller's User-Id (None: none sent): it must name a user,
    and under READS_REQUIRE_MEMBER a participant. Refuses in the API's order:
    the header missing (members only, raised here), an unknown user, no such
    conversation, not a participant (raised by `interpret`).
    """
    members_only = settings.READS_REQUIRE_MEMBER
    if members_only and user_id is None:
        raise InvalidInput(MISSING_USER_ID)

    def interpret(row: tuple) -> JsonPage:
        refusal, items, count, last, found = row
        if refusal == _UNKNOWN_USER:
            raise unknown_user(_sent(user_id))
        if not found:
            raise conversation_not_found(conversation_id)
        if refusal == _NOT_A_PARTICIPANT:
            raise not_in_conversation(_sent(user_id))
        return JsonPage(items=items or "", more=count > limit, last=last)

    params = {
        "conversation": conversation_id,
        "after": after_index,
        "limit": limit,
        "user": user_id,
        "members_only": members_only,
    }
    return PageRead(MESSAGES_PAGE_SQL, params, interpret)


# One ordered index scan per side of the pair, (user_low_id, id) and
# (user_high_id, id), merged: a page costs the same for a user with 3
# conversations or 30,000. A conversation never has the same user on both sides.
# The other participant's name is an index lookup per row, as for a message's author.
CONVERSATIONS_PAGE_SQL = f"""
SELECT string_agg({presenters.CONVERSATION_LIST_ITEM.json_sql("p", name="u.name")}, ',' ORDER BY p.id) FILTER (WHERE p.n <= %(limit)s),
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
JOIN LATERAL (SELECT name FROM users WHERE id = p.other LIMIT 1) AS u ON true
"""


def conversations_page_read(*, user_id: int | None, after_id: int, limit: int) -> PageRead:
    """One page of the caller's conversations by id, each named after the other participant, as JSON text.

    Refuses: no User-Id sent (raised here), or one naming no user (raised by `interpret`).
    """
    if user_id is None:
        raise InvalidInput(MISSING_USER_ID)

    def interpret(row: tuple) -> JsonPage:
        items, count, last, found = row
        if not found:
            raise unknown_user(user_id)
        return JsonPage(items=items or "", more=count > limit, last=last)

    return PageRead(CONVERSATIONS_PAGE_SQL, {"user": user_id, "after": after_id, "limit": limit}, interpret)
