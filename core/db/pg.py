"""PostgreSQL's share of the hot requests: one prepared statement each, JSON built by the database.

A message post, a page of messages and a page of conversations are what a chat
does all day. Each is one statement, prepared once per connection (PostgreSQL
then skips parsing and planning), and the two reads come back as the JSON text
of their items, which the view hands through without building a Python object
per row.

`PG_PREPARED_STATEMENTS=false` runs the same statements unprepared (bound on
the client, as Django's own queries are), for instance behind a
transaction-pooling proxy (pgbouncer) that cannot keep prepared statements.
"""

from __future__ import annotations

import psycopg
from django.conf import settings
from django.db import connection


def prepared_cursor():
    """A Django cursor whose statements PostgreSQL prepares on first use, once per connection.

    Django's own cursors bind parameters client-side, which never prepares; this
    one binds them server-side (the connection's `prepare_threshold` is 0, so
    psycopg prepares at once). It is still Django's cursor wrapper: errors are
    Django's, queries are counted and logged as any other. With
    PG_PREPARED_STATEMENTS off it is Django's own cursor.
    """
    if not settings.PG_PREPARED_STATEMENTS:
        return connection.cursor()
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    with connection.wrap_database_errors:
        cursor = psycopg.Cursor(connection.connection)
    if connection.queries_logged:
        return connection.make_debug_cursor(cursor)
    return connection.make_cursor(cursor)


def json_string(expression: str) -> str:
    """SQL for a text column as a JSON string, byte for byte as the API's JSON renderer writes it.

    PostgreSQL escapes exactly what Python's encoder does with
    `ensure_ascii=False`; DRF's renderer also escapes U+2028 and U+2029 (so the
    JSON is valid JavaScript), and so does this.
    """
    return f"replace(replace(to_json({expression})::text, U&'\\2028', '\\u2028'), U&'\\2029', '\\u2029')"


def json_timestamp(expression: str) -> str:
    """SQL for a timestamptz as the API writes it (`presenters.timestamp`): UTC, milliseconds truncated.

    The colons are quoted literals (`":"`), so no `:name` appears in the text:
    `make bench` hands these statements to pgbench as they are, and pgbench
    reads `:name` as one of its variables.
    """
    return f"""to_char({expression} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24":"MI":"SS.MS"Z"')"""
