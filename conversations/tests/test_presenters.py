"""Each response shape is declared once (conversations/presenters.py): its Python, SQL and OpenAPI forms agree."""

from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
from django.db import connection

from conversations import presenters
from core.http.plain_json import render

pytestmark = pytest.mark.django_db

AWKWARD = 'quote " backslash \\ separators \u2028\u2029 controls \x01\n unicode 漢字 😀'
SQL_TYPES = {presenters.ID: "bigint", presenters.TEXT: "text", presenters.TIMESTAMP: "timestamptz"}
SAMPLES = {presenters.ID: 9_007_199_254_740_991, presenters.TEXT: AWKWARD,
           presenters.TIMESTAMP: datetime(2026, 3, 4, 5, 6, 7, 999_999, tzinfo=timezone.utc)}  # fmt: skip


@pytest.mark.parametrize("shape", presenters.SHAPES, ids=lambda shape: shape.component)
def test_a_shape_written_by_postgresql_is_what_its_presenter_renders_byte_for_byte(shape):
    row = SimpleNamespace(**{field.column: SAMPLES[field.kind] for field in shape.fields})
    columns = ", ".join(f'%s::{SQL_TYPES[field.kind]} AS "{field.column}"' for field in shape.fields)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {shape.json_sql('r')} FROM (SELECT {columns}) AS r",
            [SAMPLES[field.kind] for field in shape.fields],
        )
        (written,) = cursor.fetchone()
    assert written.encode() == render(shape.present(row))


@pytest.mark.parametrize("shape", presenters.SHAPES, ids=lambda shape: shape.component)
def test_a_shapes_openapi_component_names_its_presenters_keys_in_order(shape):
    row = SimpleNamespace(**{field.column: SAMPLES[field.kind] for field in shape.fields})
    schema = shape.schema()
    assert list(schema["properties"]) == schema["required"] == list(shape.present(row))
    assert schema["additionalProperties"] is False


def test_the_message_shapes_keep_the_contracts_key_orders():
    """A page's item and a posted message differ (channel_id, conversation_id), as the reference's did."""
    assert [f.name for f in presenters.MESSAGE_LIST_ITEM.fields] == [
        "id", "content", "user_id", "channel_id", "index", "inserted_at", "username"
    ]  # fmt: skip
    assert [f.name for f in presenters.MESSAGE.fields] == [
        "id", "content", "index", "user_id", "username", "conversation_id", "inserted_at"
    ]  # fmt: skip
    assert [f.name for f in presenters.CONVERSATION_LIST_ITEM.fields] == ["id", "inserted_at", "name"]
    assert [f.name for f in presenters.USER.fields] == ["id", "name", "inserted_at"]
