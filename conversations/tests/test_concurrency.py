"""Index allocation and the one-conversation-per-pair rule under real concurrency.

Each thread has its own real PostgreSQL connection (Django connections are
per thread), so these are the races a multi-worker deployment would see.
"""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection, connections
from rest_framework.test import APIClient

from conversations import services
from conversations.models import Conversation, Message, User
from outbox.models import OutboxEvent

pytestmark = pytest.mark.django_db(transaction=True)

POSTERS = 64


def _in_thread(fn):
    """Run fn with a fresh client, closing this thread's connection after."""

    def run(*args):
        try:
            return fn(APIClient(), *args)
        finally:
            connections.close_all()

    return run


def test_64_concurrent_posters_get_indexes_1_to_n_with_no_gap_or_error():
    assert connection.vendor == "postgresql"
    alice = User.objects.create(name="alice")
    bob = User.objects.create(name="bob")
    conversation = services.conversation_create(participant_ids=[alice.pk, bob.pk])
    barrier = threading.Barrier(POSTERS)

    @_in_thread
    def post(client, n):
        barrier.wait(timeout=30)
        user = alice if n % 2 else bob
        response = client.post(
            f"/conversations/{conversation.pk}/messages",
            {"content": f"m{n}"},
            format="json",
            HTTP_USER_ID=str(user.pk),
        )
        return response.status_code, response.json()["message"]["index"] if response.status_code == 201 else None

    with ThreadPoolExecutor(max_workers=POSTERS) as pool:
        results = list(pool.map(post, range(POSTERS)))

    assert [status for status, _ in results] == [201] * POSTERS
    assert sorted(index for _, index in results) == list(range(1, POSTERS + 1))
    stored = list(Message.objects.filter(conversation=conversation).order_by("index").values_list("index", flat=True))
    assert stored == list(range(1, POSTERS + 1))
    assert Conversation.objects.get(pk=conversation.pk).last_index == POSTERS
    events = sorted(e.payload["index"] for e in OutboxEvent.objects.all())
    assert events == list(range(1, POSTERS + 1))


def test_concurrent_creates_of_one_pair_make_exactly_one_conversation():
    alice = User.objects.create(name="alice")
    bob = User.objects.create(name="bob")
    creators = 16
    barrier = threading.Barrier(creators)

    @_in_thread
    def create(client, n):
        barrier.wait(timeout=30)
        ids = [alice.pk, bob.pk] if n % 2 else [bob.pk, alice.pk]
        response = client.post("/conversations", {"participant_ids": ids}, format="json")
        return response.status_code, response.json()

    with ThreadPoolExecutor(max_workers=creators) as pool:
        results = list(pool.map(create, range(creators)))

    conversation = Conversation.objects.get()
    assert sorted(status for status, _ in results) == [201] + [400] * (creators - 1)
    refusals = [body for status, body in results if status == 400]
    assert all(
        body == {"error": f"A conversation between these two users already exists with id {conversation.pk}"}
        for body in refusals
    )
