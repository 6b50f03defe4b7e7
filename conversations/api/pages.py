"""The two hot pages as the API asks for and answers them, apart from any web framework.

A page of messages and a page of the caller's conversations are answered by
two servers of an instance: Django's view (conversations/api/views.py, which
also gives the browsable API) and the live listener's asyncio reads
(conversations/live/reads.py, where NGINX sends plain JSON reads). Both ask
here, with the request's path id, query parameters and User-Id header, for
the page's statement (a `selectors.PageRead`), and here for the answer's bytes:
one reading of the request and one answer, whichever server carries them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from urllib.parse import urlencode

from conversations import selectors, validation
from conversations.refusals import MISSING_USER_ID
from conversations.validation import DEFAULT_PAGE, MAX_PAGE
from core.http import plain_json
from core.http.errors import InvalidInput

# What a page answers with its items, and the query parameter its `next` link carries.
MESSAGES = ("messages", "after_index")
CONVERSATIONS = ("conversations", "after_id")


def page_limit(query: Mapping[str, str]) -> int:
    return validation.query_int(query, "limit", default=DEFAULT_PAGE, minimum=1, maximum=MAX_PAGE)


def cursor(query: Mapping[str, str], name: str) -> int:
    return validation.query_int(query, name, default=0, minimum=0, maximum=validation.MAX_ID)


def caller_id(header: str | None) -> int | None:
    """The User-Id header's id, None when absent (a malformed one is a 400); whether it names a user is the statement's to decide."""
    return None if header is None else validation.positive_id(header.strip(), "User-Id header")


def required_caller_id(header: str | None) -> int:
    """The User-Id header's id; the contract's 400 when the header is missing."""
    user_id = caller_id(header)
    if user_id is None:
        raise InvalidInput(MISSING_USER_ID)
    return user_id


def messages_read(
    conversation_id: str, query: Mapping[str, str], user_id_header: str | None
) -> tuple[selectors.PageRead, int]:
    """A message page's statement and its limit, refusals in the route's order; `wait` is checked, not used."""
    user_id = caller_id(user_id_header)
    conversation_pk = validation.positive_id(conversation_id, "Conversation id")
    limit = page_limit(query)
    validation.wait_seconds(query)  # waiting is the live listener's (conversations/live)
    read = selectors.messages_page_read(
        conversation_id=conversation_pk, after_index=cursor(query, "after_index"), limit=limit, user_id=user_id
    )
    return read, limit


def conversations_read(query: Mapping[str, str], user_id_header: str | None) -> tuple[selectors.PageRead, int]:
    """A conversation list page's statement and its limit."""
    user_id = required_caller_id(user_id_header)
    limit = page_limit(query)
    return selectors.conversations_page_read(user_id=user_id, after_id=cursor(query, "after_id"), limit=limit), limit


def answer(
    what: tuple[str, str], page: selectors.JsonPage, limit: int, absolute: Callable[[str], str], path: str
) -> plain_json.JsonAnswer:
    """`{key: [items], "next": ...}` around a page's JSON text, byte for byte as DRF renders it.

    `absolute` makes the `next` link's URL absolute from a path and query, as
    Django's `request.build_absolute_uri` does.
    """
    key, cursor_name = what
    body = b'{"' + key.encode() + b'":[' + page.items.encode() + b"]"
    if page.more and page.last is not None:  # a further page follows a non-empty one
        body += b',"next":' + plain_json.json_string(next_link(absolute, path, cursor_name, page.last, limit))
    return plain_json.JsonAnswer(body + b"}")


def next_link(absolute: Callable[[str], str], path: str, cursor_name: str, last: int, limit: int) -> str:
    """The URL of the page after the one whose last item's cursor is `last` (every paged route's `next`)."""
    return absolute(f"{path}?{urlencode({cursor_name: last, 'limit': limit})}")
