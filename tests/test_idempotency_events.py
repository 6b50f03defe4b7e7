"""Idempotent replays against the real broker: one new_message event per stored message, never more.

Uses the events tests' real parts (tests/test_events.py): a RabbitMQ vhost of
this module's own, chat_queue read as the notifier reads it, and a real Celery
worker relaying the outbox.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connections
from rest_framework.test import APIClient

from conversations.models import Message
from outbox.models import OutboxEvent
from tests.support.processes import wait_until
from tests.test_events import broker, chat_queue, indexes, pending, start_worker, vhost  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def post(client, conversation, user, key, content="hello"):
    return client.post(f"/conversations/{conversation.pk}/messages", {"content": content}, format="json",
                       HTTP_USER_ID=str(user.pk), HTTP_IDEMPOTENCY_KEY=key)


def test_replays_and_a_race_on_one_key_publish_one_event_per_message(
    users, conversation, broker, chat_queue, start_worker
):
    start_worker()
    first = post(APIClient(), conversation, users[0], "once")
    replays = [post(APIClient(), conversation, users[0], "once") for _ in range(2)]
    assert [r.status_code for r in [first, *replays]] == [201, 201, 201]
    assert all(r.json() == first.json() and r["Idempotent-Replayed"] == "true" for r in replays)

    racers = 8
    barrier = threading.Barrier(racers)

    def race(_):
        try:
            barrier.wait(timeout=30)
            response = post(APIClient(), conversation, users[1], "double-click", "racing")
            return response.status_code, response.json()["message"]["id"]
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=racers) as pool:
        results = list(pool.map(race, range(racers)))
    assert {status for status, _ in results} == {201}
    assert len({message_id for _, message_id in results}) == 1

    deliveries = chat_queue.wait_for(2, timeout=30)
    wait_until(lambda: pending() == 0, 20, what="the outbox relayed")
    time.sleep(1)  # room for a duplicate to show up, were one sent
    deliveries += chat_queue.drain()
    assert sorted(indexes(deliveries)) == [1, 2]
    assert Message.objects.count() == OutboxEvent.objects.count() == 2
