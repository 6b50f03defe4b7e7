"""Parsing of client input: request bodies, path ids, query parameters.

Every function either returns a clean Python value or raises `InvalidInput`
with a sentence the client can act on, so bad input is a 400, never a 500.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings

from conversations.refusals import CONTENT_REQUIRED, INDEX_INVALID, NAME_REQUIRED
from core.http.errors import InvalidInput

# PostgreSQL bigint: an id beyond this names nothing and cannot be queried.
MAX_ID = 2**63 - 1
# Pages: the size a list answers with unless `limit` says otherwise, and the largest it may ask.
DEFAULT_PAGE = 100
MAX_PAGE = 1000
USER_NAME_MAX = 200


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _decimal_at_most(text: str, maximum: int) -> int | None:
    """The value of ASCII decimal digits `text`, or None when it is not such digits or exceeds `maximum`.

    The length is checked before `int()`: Python refuses to convert more than 4,300 digits
    (a ValueError), and a header or JSON field may carry far more.
    """
    if not text.isdecimal() or not text.isascii():
        return None
    significant = text.lstrip("0") or "0"
    if len(significant) > len(str(maximum)):
        return None
    value = int(significant)
    return value if value <= maximum else None


def positive_id(raw: Any, what: str) -> int:
    """A database id given as text (path, header) or as a JSON integer."""
    if isinstance(raw, str):
        text = raw.strip()
        if not text.isdecimal() or not text.isascii():
            raise InvalidInput(f"{what} must be a positive integer, got {raw[:40]!r}")
        value = _decimal_at_most(text, MAX_ID)
        if value is None:
            raise InvalidInput(f"{what} must be a positive integer no larger than {MAX_ID}")
    elif _is_int(raw):
        value = raw
    else:
        raise InvalidInput(f"{what} must be a positive integer")
    if not 1 <= value <= MAX_ID:
        raise InvalidInput(f"{what} must be a positive integer no larger than {MAX_ID}")
    return value


def body_object(data: Any) -> Mapping[str, Any]:
    """The request body as a JSON object (an absent body counts as `{}`)."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise InvalidInput("Request body must be a JSON object")
    return data


def participant_ids(data: Any) -> list[int]:
    body = body_object(data)
    ids = body.get("participant_ids")
    if ids is None:
        ids = []
    if not isinstance(ids, list):
        raise InvalidInput("participant_ids must be a list of user ids")
    if not all(_is_int(item) for item in ids):
        raise InvalidInput("participant_ids must contain only integer user ids")
    return ids


def _require_storable_text(text: str, what: str) -> None:
    """JSON may escape half of a surrogate pair (`"\\ud800"`); PostgreSQL (UTF-8) cannot store it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} must be valid Unicode text (it has an unpaired surrogate)") from None


def message_content(data: Any) -> str:
    content = body_object(data).get("content")
    if not isinstance(content, str) or not content.strip():
        raise InvalidInput(CONTENT_REQUIRED)
    if "\x00" in content:
        raise InvalidInput("content must not contain NUL characters")
    _require_storable_text(content, "content")
    return content


IDEMPOTENCY_KEY_MAX = 255
_IDEMPOTENCY_KEY_CHARS = frozenset(chr(code) for code in range(0x21, 0x7F))  # visible ASCII


def idempotency_key(raw: str | None) -> str | None:
    """The `Idempotency-Key` header: absent, or 1 to 255 visible ASCII characters (a UUID fits)."""
    if raw is None:
        return None
    if not 1 <= len(raw) <= IDEMPOTENCY_KEY_MAX or not set(raw) <= _IDEMPOTENCY_KEY_CHARS:
        raise InvalidInput(f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} visible ASCII characters (a UUID, say)")
    return raw


def view_horizon_index(data: Any) -> int:
    index = body_object(data).get("index")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= MAX_ID:
        raise InvalidInput(INDEX_INVALID)
    return index


def user_name(data: Any) -> str:
    name = body_object(data).get("name")
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput(NAME_REQUIRED)
    if "\x00" in name or len(name) > USER_NAME_MAX:
        raise InvalidInput(f"name must be at most {USER_NAME_MAX} characters, without NUL characters")
    _require_storable_text(name, "name")
    return name.strip()


def query_int(params: Mapping[str, str], name: str, *, default: int, minimum: int, maximum: int) -> int:
    """An integer query parameter within [minimum, maximum]."""
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    value = _decimal_at_most(raw, maximum)
    if value is None or value < minimum:
        raise InvalidInput(f"{name} must be an integer from {minimum} to {maximum}")
    return value


def wait_seconds(params: Mapping[str, str]) -> int:
    """A message page's `wait`: whole seconds from 0 to LIVE_WAIT_MAX (the live listener holds the page that long)."""
    return query_int(params, "wait", default=0, minimum=0, maximum=settings.LIVE_WAIT_MAX)
