"""How rows look on the wire: each response shape declared once.

A `Shape` lists its fields in the contract's key order, each of a kind (an id,
text, a timestamp). From that one declaration come the three forms of the
shape: `present` (a row as the dict DRF renders), `json_sql` (SQL that writes
the same object as JSON text, for the statements that hand PostgreSQL's JSON
through) and `schema` (its OpenAPI component, conversations/api/openapi.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from conversations.validation import MAX_ID
from core.db import pg


def timestamp(value: datetime) -> str:
    """ISO 8601 in UTC with milliseconds, as the reference printed them."""
    value = value.astimezone(timezone.utc)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


ID_SCHEMA = {"type": "integer", "format": "int64", "minimum": 1, "maximum": MAX_ID, "example": 1}
TIMESTAMP_SCHEMA = {
    "type": "string",
    "format": "date-time",
    "description": "UTC, with milliseconds.",
    "example": "2026-11-29T06:41:59.000Z",
}


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: there are three
class Kind:
    """How a field of one kind is presented, written by PostgreSQL, and described."""

    present: Callable[[Any], Any]
    # SQL segments for a column expression: literal text to write around it, and the expression's JSON.
    quote: str
    sql: Callable[[str], str]
    schema: Mapping[str, Any]


ID = Kind(present=int, quote="", sql=lambda column: column, schema=ID_SCHEMA)
TEXT = Kind(present=str, quote="", sql=pg.json_string, schema={"type": "string"})
TIMESTAMP = Kind(present=timestamp, quote='"', sql=pg.json_timestamp, schema=TIMESTAMP_SCHEMA)


@dataclass(frozen=True)
class Field:
    name: str
    kind: Kind
    description: str = ""
    # The row's attribute (and the SQL column) when it is not named as the key.
    source: str = ""

    @property
    def column(self) -> str:
        return self.source or self.name


@dataclass(frozen=True)
class Shape:
    """One response object: its OpenAPI component name and its fields, in key order."""

    component: str
    fields: tuple[Field, ...]

    def present(self, row) -> dict:
        """The row (any object with the fields' attributes) as the dict the API renders."""
        return {field.name: field.kind.present(getattr(row, field.column)) for field in self.fields}

    def json_sql(self, alias: str, **columns: str) -> str:
        """SQL writing the object as JSON text, byte for byte as DRF renders `present`'s dict.

        Each field's value is `alias.<column>` unless `columns` gives its expression.
        """
        pieces: list[str] = []
        literal = "{"
        for field in self.fields:
            literal += ("," if literal != "{" else "") + f'"{field.name}":' + field.kind.quote
            pieces.append(f"'{literal}'")
            pieces.append(field.kind.sql(columns.get(field.name, f"{alias}.{field.column}")))
            literal = field.kind.quote
        pieces.append(f"'{literal}}}'")
        return " || ".join(pieces)

    def schema(self) -> dict:
        """The OpenAPI component: a closed object, every field required."""
        properties = {
            field.name: {**field.kind.schema, **({"description": field.description} if field.description else {})}
            for field in self.fields
        }
        return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


USER = Shape("User", (Field("id", ID), Field("name", TEXT), Field("inserted_at", TIMESTAMP)))
CONVERSATION = Shape("Conversation", (Field("id", ID), Field("inserted_at", TIMESTAMP)))
CONVERSATION_LIST_ITEM = Shape(
    "ConversationListItem",
    (Field("id", ID), Field("inserted_at", TIMESTAMP), Field("name", TEXT, "The other participant's name.")),
)
MESSAGE_LIST_ITEM = Shape(
    "MessageListItem",
    (
        Field("id", ID),
        Field("content", TEXT),
        Field("user_id", ID),
        Field("channel_id", ID, "The conversation's id (the reference's name)."),
        Field("index", ID, "Position in the conversation: 1, 2, 3... with no gaps."),
        Field("inserted_at", TIMESTAMP),
        Field("username", TEXT),
    ),
)
MESSAGE = Shape(
    "Message",
    (
        Field("id", ID),
        Field("content", TEXT),
        Field("index", ID),
        Field("user_id", ID),
        Field("username", TEXT),
        Field("conversation_id", ID),
        Field("inserted_at", TIMESTAMP),
    ),
)
SHAPES = (USER, CONVERSATION, CONVERSATION_LIST_ITEM, MESSAGE_LIST_ITEM, MESSAGE)

user = USER.present
conversation = CONVERSATION.present
message = MESSAGE.present
