"""The OpenAPI description of the API: what each operation takes and answers.

The views are plain `APIView`s that parse by hand (see `validation`), so
nothing here is introspected: each operation's parameters, body and responses
are written out as JSON Schema, with every limit and refusal text taken from
the code that enforces it (`validation`, `services`, the config schema), and
each response object from its one declaration (`presenters`). `conversations/tests/test_openapi.py` checks real responses against this description,
and `tests/test_fuzz.py` fuzzes a live server with it.

Views take their description from the decorators at the bottom
(`@openapi.messages_create`); `postprocess` adds what drf-spectacular cannot
see: the plain `/health` view, the component schemas, and the headers every
response carries.
"""

from __future__ import annotations

import copy
from typing import Any, Final

from drf_spectacular.utils import OpenApiParameter, extend_schema

from conversations import presenters, refusals
from conversations.refusals import MISSING_USER_ID
from conversations.validation import DEFAULT_PAGE, IDEMPOTENCY_KEY_MAX, MAX_ID, MAX_PAGE, USER_NAME_MAX
from core.config import SCHEMA_BY_NAME
from core.http import gunicorn_refusals
from core.http.errors import DATABASE_UNAVAILABLE

HEADER: Final = OpenApiParameter.HEADER
QUERY: Final = OpenApiParameter.QUERY
PATH: Final = OpenApiParameter.PATH


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


_ID = presenters.ID_SCHEMA
_NEXT = {"type": "string", "format": "uri", "description": "The next page; absent on the last page."}
# Text the service stores: not blank, no NUL characters (PostgreSQL text cannot hold them).
_TEXT_PATTERN = r"^[^\u0000]*[^\s\u0000][^\u0000]*$"


def _object(properties: dict, required: list[str] | None = None, closed: bool = True) -> dict:
    schema: dict[str, Any] = {"type": "object", "properties": properties, "required": required or list(properties)}
    if closed:
        schema["additionalProperties"] = False
    return schema


def _page(key: str, item: str) -> dict:
    return _object({key: {"type": "array", "items": ref(item)}, "next": _NEXT}, required=[key])


COMPONENTS: dict[str, dict] = {
    "Error": _object({"error": {"type": "string", "description": "What went wrong, in a sentence."}}),
    # The response objects, each from its one declaration (conversations/presenters.py).
    **{shape.component: shape.schema() for shape in presenters.SHAPES},
    "UserPage": _page("users", "User"),
    "UserCreated": _object({"user": ref("User")}),
    "UserCreate": _object(
        {
            "name": {
                "type": "string",
                "minLength": 1,
                "maxLength": USER_NAME_MAX,
                "pattern": _TEXT_PATTERN,
                "example": "James Blanderphone",
            }
        },
        closed=False,
    ),
    "ConversationCreated": _object({"conversation": ref("Conversation")}),
    "ConversationCreate": _object(
        {
            "participant_ids": {
                "type": "array",
                "items": _ID,
                "minItems": refusals.PARTICIPANT_COUNT,
                "maxItems": refusals.PARTICIPANT_COUNT,
                "uniqueItems": True,
                "description": "The two users of the conversation.",
                "example": [1, 2],
            }
        },
        closed=False,
    ),
    "ConversationPage": _page("conversations", "ConversationListItem"),
    "MessagePage": _page("messages", "MessageListItem"),
    "MessageCreated": _object({"message": ref("Message")}),
    "MessageCreate": _object(
        {
            "content": {
                "type": "string",
                "minLength": 1,
                "pattern": _TEXT_PATTERN,
                "example": "This is the first message",
            }
        },
        closed=False,
    ),
    "ViewHorizon": _object(
        {
            "index": {
                "type": "integer",
                "format": "int64",
                "minimum": 0,
                "maximum": MAX_ID,
                "example": 1,
                "description": "The last index the user has seen; a lower value than before changes nothing.",
            }
        },
        closed=False,
    ),
}


# --- parameters ----------------------------------------------------------------


def _user_id(required: bool, description: str) -> OpenApiParameter:
    return OpenApiParameter("User-Id", _ID, HEADER, required=required, description=description)


USER_ID = _user_id(True, f"The calling user. Missing: 400 `{MISSING_USER_ID}`")
USER_ID_WHEN_MEMBERS_ONLY = _user_id(
    False,
    "The calling user. Required, and must be a participant, when the instance runs with "
    "READS_REQUIRE_MEMBER on; otherwise only checked to name a known user.",
)
IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    {"type": "string", "minLength": 1, "maxLength": IDEMPOTENCY_KEY_MAX, "pattern": "^[!-~]+$"},
    HEADER,
    description=(
        "A client-chosen key (a UUID, say) that makes a retry safe: repeating the same post with the same key "
        "returns the first message (201, same id and index, header `Idempotent-Replayed: true`) and stores "
        "nothing new. The same key with another conversation or content is a 422. Keys are remembered for "
        f"IDEMPOTENCY_KEY_TTL ({SCHEMA_BY_NAME['IDEMPOTENCY_KEY_TTL'].default} by default)."
    ),
)
CONVERSATION_ID = OpenApiParameter("conversation_id", _ID, PATH, description="A conversation's id.")
LIMIT = OpenApiParameter(
    "limit",
    {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE},
    QUERY,
    description="Page size.",
)


def _cursor(name: str, what: str) -> OpenApiParameter:
    return OpenApiParameter(
        name,
        {"type": "integer", "format": "int64", "minimum": 0, "maximum": MAX_ID},
        QUERY,
        description=f"Return {what} after this one (0: from the start).",
    )


WAIT_MAX = SCHEMA_BY_NAME["LIVE_WAIT_MAX"].default
WAIT = OpenApiParameter(
    "wait",
    {"type": "integer", "minimum": 0, "maximum": WAIT_MAX, "default": 0},
    QUERY,
    description=(
        "Long-poll: when no message follows `after_index`, hold the request up to this many seconds "
        "(LIVE_WAIT_MAX, " + str(WAIT_MAX) + " by default) and answer as soon as one is stored, on any instance; "
        '`{"messages": []}` when none came. Refusals come first, never after a wait. Served through the '
        "load balancer by each instance's live listener (docs/live.md); an instance asked directly answers at once."
    ),
)
WAIT_INVALID = f"wait must be an integer from 0 to {WAIT_MAX}"


# --- responses -------------------------------------------------------------------


def _json(name: str, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": ref(name)}}}


def error(description: str) -> dict:
    return _json("Error", description)


BAD_INPUT = (
    "Bad input: malformed (or too deeply nested) JSON, a wrong type, text with an unpaired surrogate, "
    "a non-numeric id, a malformed or unknown `User-Id`"
)
UNAVAILABLE = error(f"The database is unreachable or too slow: `{DATABASE_UNAVAILABLE}` (with `Retry-After`).")
TOO_LARGE = error("The body is larger than JSON_BODY_LIMIT; refused unread, nothing stored.")
UNSUPPORTED = error("The body is not `application/json`.")
NO_SUCH_CONVERSATION = error(f"`{refusals.CONVERSATION_NOT_FOUND.format(conversation_id='N')}`.")
NOT_IN_CONVERSATION = f"`{refusals.NOT_IN_CONVERSATION.format(user_id='N')}`"

# The decorators take dict schemas as they are; drf-spectacular's own response
# building is bypassed by `postprocess`, which writes these in.
_RESPONSES: dict[str, dict] = {}


def _operation(
    operation_id: str,
    summary: str,
    *,
    tags: list[str],
    parameters=(),
    request: str | None = None,
    responses: dict,
    description: str = "",
):
    """`extend_schema` for one operation, with its responses kept for `postprocess`."""
    _RESPONSES[operation_id] = {str(code): body for code, body in responses.items()}
    return extend_schema(
        operation_id=operation_id,
        summary=summary,
        description=description,
        tags=tags,
        parameters=list(parameters),
        request={"application/json": ref(request)} if request else None,
        responses={code: None for code in responses},
    )


# The operations, one declaration each, as a table: kept out of the formatter's hands.
# fmt: off
users_list = _operation(
    "users_list", "List users", tags=["users"],
    parameters=[_cursor("after_id", "users"), LIMIT],
    responses={200: _json("UserPage", "Users by id."), 400: error(BAD_INPUT + "."), 503: UNAVAILABLE},
)
users_create = _operation(
    "users_create", "Add a user", tags=["users"], request="UserCreate",
    responses={
        201: _json("UserCreated", "The new user."),
        400: error(BAD_INPUT + f"; `{refusals.NAME_REQUIRED}`."),
        413: TOO_LARGE, 415: UNSUPPORTED, 503: UNAVAILABLE,
    },
)
conversations_list = _operation(
    "conversations_list", "List the caller's conversations", tags=["conversations"],
    parameters=[USER_ID, _cursor("after_id", "conversations"), LIMIT],
    responses={
        200: _json("ConversationPage", "The caller's conversations by id, each named after the other participant."),
        400: error(BAD_INPUT + f"; `{MISSING_USER_ID}`."),
        503: UNAVAILABLE,
    },
)
conversations_create = _operation(
    "conversations_create", "Start a conversation between two users", tags=["conversations"],
    request="ConversationCreate",
    responses={
        201: _json("ConversationCreated", "The new conversation."),
        400: error(
            BAD_INPUT + f"; `{refusals.CONVERSATION_NEEDS_TWO_USERS}`; `{refusals.UNKNOWN_PARTICIPANTS}`; "
            f"`{refusals.CONVERSATION_EXISTS.format(conversation_id='N')}`."
        ),
        413: TOO_LARGE, 415: UNSUPPORTED, 503: UNAVAILABLE,
    },
)
messages_list = _operation(
    "messages_list", "Read a conversation's messages", tags=["messages"],
    parameters=[CONVERSATION_ID, USER_ID_WHEN_MEMBERS_ONLY, _cursor("after_index", "messages"), LIMIT, WAIT],
    description="With `wait`, a long-poll: see the parameter. `GET /conversations/{conversation_id}/stream` "
    "delivers the same messages as Server-Sent Events.",
    responses={
        200: _json("MessagePage", "Messages in index order."),
        400: error(
            BAD_INPUT + f"; `{WAIT_INVALID}`; with READS_REQUIRE_MEMBER on: `{MISSING_USER_ID}` or {NOT_IN_CONVERSATION}."
        ),
        404: NO_SUCH_CONVERSATION,
        503: UNAVAILABLE,
    },
)
messages_create = _operation(
    "messages_create", "Post a message", tags=["messages"],
    parameters=[CONVERSATION_ID, USER_ID, IDEMPOTENCY_KEY], request="MessageCreate",
    description="Stores the message with the conversation's next index and emits a `new_message` event.",
    responses={
        201: _json("MessageCreated", "The stored message (or, for a repeated Idempotency-Key, the first one)."),
        400: error(
            BAD_INPUT + f"; `{MISSING_USER_ID}`; {NOT_IN_CONVERSATION}; `{refusals.CONTENT_REQUIRED}`; "
            "a malformed Idempotency-Key."
        ),
        404: NO_SUCH_CONVERSATION,
        413: TOO_LARGE, 415: UNSUPPORTED,
        422: error(f"`{refusals.IDEMPOTENCY_KEY_REUSED}`."),
        503: UNAVAILABLE,
    },
)
view_horizon_set = _operation(
    "view_horizon_set", "Record how far the caller has read", tags=["messages"],
    parameters=[CONVERSATION_ID, USER_ID], request="ViewHorizon",
    responses={
        204: {"description": "Recorded (a horizon never moves back)."},
        400: error(
            BAD_INPUT + f"; `{MISSING_USER_ID}`; {NOT_IN_CONVERSATION}; `{refusals.INDEX_INVALID}`."
        ),
        404: NO_SUCH_CONVERSATION,
        413: TOO_LARGE, 415: UNSUPPORTED, 503: UNAVAILABLE,
    },
)
# fmt: on

# The plain Django view, which drf-spectacular does not see.
_HEALTH = {
    "get": {
        "operationId": "health",
        "summary": "Can this instance serve?",
        "description": (
            "Used by Consul's health check and the load balancer. 200 while the database answers "
            "(a successful check is reused for up to a second; a failed one never is)."
        ),
        "tags": ["health"],
        "responses": {
            "200": {
                "description": "Healthy.",
                "content": {"text/plain": {"schema": {"type": "string", "enum": ["OK"]}}},
            },
            "503": {
                "description": "The database is unreachable.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
        },
    }
}

# The event stream is the live listener's alone (conversations/live), reached
# through the load balancer: written out here, as /health is.
_STREAM = {
    "get": {
        "operationId": "messages_stream",
        "summary": "Follow a conversation's messages as Server-Sent Events",
        "description": (
            "`text/event-stream`: one event per message, `id:` its index and `data:` the message as the page has "
            "it, from after `Last-Event-ID` (a reconnecting browser sends it) or `after_index`; a comment line "
            "every LIVE_HEARTBEAT keeps an idle stream open. Same refusals as the page, before the stream starts. "
            "A draining instance ends the stream; the client resumes from its last id. Served through the load "
            "balancer by each instance's live listener (docs/live.md)."
        ),
        "tags": ["messages"],
        "parameters": [
            {
                "name": "conversation_id",
                "in": "path",
                "required": True,
                "schema": _ID,
                "description": "A conversation's id.",
            },
            {
                "name": "User-Id",
                "in": "header",
                "required": False,
                "schema": _ID,
                "description": USER_ID_WHEN_MEMBERS_ONLY.description,
            },
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID},
                "description": "Resume after this index (it wins over `after_index`).",
            },
            {
                "name": "after_index",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "format": "int64", "minimum": 0, "maximum": MAX_ID},
                "description": "Start after this index (0: from the start).",
            },
        ],
        "responses": {
            "200": {
                "description": "The stream: `id: <index>` and `data: <message JSON>` per event.",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            "400": {
                "description": "Bad input, or the page's refusals.",
                "content": {"application/json": {"schema": ref("Error")}},
            },
            "404": {"description": "No such conversation.", "content": {"application/json": {"schema": ref("Error")}}},
        },
    }
}

_REQUEST_ID_HEADER = {
    "description": "The request's id: the caller's X-Request-Id when it sent a usable one, else a new one. "
    "The same id is in the instance's log line for the request.",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 128},
}
# gunicorn itself refuses a request line (path and query) over its limit,
# before the application sees it: JSON as ever, but no X-Request-Id.
_URI_TOO_LONG = error(
    f"The request line (path and query) is longer than the HTTP server accepts "
    f"({gunicorn_refusals.LIMIT_REQUEST_LINE} bytes); refused unread."
)
_RETRY_AFTER_HEADER = {
    "description": "Seconds to wait before retrying.",
    "required": True,
    "schema": {"type": "string"},
}
_REPLAYED_HEADER = {
    "description": "`true` when an Idempotency-Key repeat returned the first message.",
    "required": False,
    "schema": {"type": "string", "enum": ["true"]},
}


def postprocess(result: dict, generator, request, public) -> dict:
    """drf-spectacular hook: components, the written-out responses, /health, common headers."""
    result.setdefault("components", {})["schemas"] = copy.deepcopy(COMPONENTS)
    result["components"].pop("securitySchemes", None)
    result["paths"] = {
        "/health": copy.deepcopy(_HEALTH),
        **result["paths"],
        "/conversations/{conversation_id}/stream": copy.deepcopy(_STREAM),
    }
    for methods in result["paths"].values():
        for operation in methods.values():
            operation.pop("security", None)
            if operation["operationId"] in _RESPONSES:
                operation["responses"] = copy.deepcopy(_RESPONSES[operation["operationId"]])
            if "requestBody" in operation:
                operation["requestBody"]["required"] = True
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "query":
                    parameter["allowEmptyValue"] = True  # `?limit=` means the default, as if absent
            for code, response in operation["responses"].items():
                headers = response.setdefault("headers", {})
                headers["X-Request-Id"] = _REQUEST_ID_HEADER
                if code == "503" and operation["operationId"] != "health":
                    headers["Retry-After"] = _RETRY_AFTER_HEADER
                if code == "201" and operation["operationId"] == "messages_create":
                    headers["Idempotent-Replayed"] = _REPLAYED_HEADER
            operation["responses"]["414"] = copy.deepcopy(_URI_TOO_LONG)
    return result
