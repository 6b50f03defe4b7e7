"""How rows look on the wire: the contract's JSON keys, ids as integers."""

from __future__ import annotations

from datetime import datetime, timezone


def timestamp(value: datetime) -> str:
    """ISO 8601 in UTC with milliseconds, as the reference printed them."""
    value = value.astimezone(timezone.utc)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def user(row) -> dict:
    return {"id": row.id, "name": row.name, "inserted_at": timestamp(row.inserted_at)}


def conversation(row) -> dict:
    return {"id": row.id, "inserted_at": timestamp(row.inserted_at)}
