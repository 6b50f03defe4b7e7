"""What the relay puts on the wire for an outbox row: the queue, the message's properties, its body.

The queue is the notifier's `chat_queue`, declared durable with no arguments:
the notifier declares it exactly so, and any other declaration would clash.
Every message is persistent, carries its event type as the AMQP `type` and
its event id as `message_id` (stable, so a consumer can drop a redelivery),
and a compact JSON body.

The stored payload is jsonb, which does not keep key order; the body does.
A domain app declares each of its event types once, with the body's keys in
their order (`declare_event_type`, see conversations/events.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from kombu import Exchange, Queue

QUEUE_NAME = "chat_queue"
# Published through the default exchange, whose routing key is the queue's name.
CHAT_QUEUE = Queue(QUEUE_NAME, exchange=Exchange(""), routing_key=QUEUE_NAME, durable=True, auto_delete=False)
CONTENT_TYPE = "application/json"
PERSISTENT = 2  # delivery mode: the message survives a broker restart in the durable queue

_BODY_KEYS: dict[str, tuple[str, ...]] = {}


def declare_event_type(event_type: str, *, keys: Sequence[str]) -> None:
    """Declare an event type's body: exactly these keys, in this order. Safe to call twice."""
    _BODY_KEYS[event_type] = tuple(keys)


def encode_body(event_type: str, payload: Mapping[str, Any]) -> bytes:
    """The JSON body: the declared keys in their declared order, no spaces."""
    keys = _BODY_KEYS.get(event_type, tuple(payload))
    return json.dumps({key: payload[key] for key in keys}, separators=(",", ":")).encode()
