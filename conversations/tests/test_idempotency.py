"""Safe retries: `Idempotency-Key` on POST /conversations/{id}/messages.

A repeat with the same key, user and body returns the first message (201, same
id and index, `Idempotent-Replayed: true`) and stores nothing: no message, no
event. The same key with another body is a 422. Keys expire after
IDEMPOTENCY_KEY_TTL and are purged by `manage.py purge_idempotency_keys`.
"""

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connections
from django.utils import timezone
from rest_framework.test import APIClient

from conversations import services
from conversations.models import IdempotencyKey, Message, User
from conversations.tests.client import post_message
from outbox.models import OutboxEvent

REUSED = {
    "error": "Idempotency-Key was already used for a different request (another conversation or content); "
    "use a new key for a new message"
}
MALFORMED = {"error": "Idempotency-Key must be 1 to 255 visible ASCII characters (a UUID, say)"}


def post(api, conversation_id, user, content="hello", key=None):
    headers = {"HTTP_USER_ID": str(user.pk)}
    if key is not None:
        headers["HTTP_IDEMPOTENCY_KEY"] = key
    return api.post(f"/conversations/{conversation_id}/messages", {"content": content}, format="json", **headers)


def rows():
    return Message.objects.count(), OutboxEvent.objects.count(), IdempotencyKey.objects.count()


@pytest.mark.django_db
def test_repeat_with_same_key_returns_the_first_message_and_stores_nothing(api, users, conversation):
    first = post(api, conversation.pk, users[0], key="retry-1")
    again = post(api, conversation.pk, users[0], key="retry-1")

    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert first.json()["message"]["index"] == 1
    assert "Idempotent-Replayed" not in first
    assert again["Idempotent-Replayed"] == "true"
    assert rows() == (1, 1, 1)
    assert [e.payload["index"] for e in OutboxEvent.objects.all()] == [1]


@pytest.mark.django_db
def test_same_key_with_other_content_is_422_and_stores_nothing(api, users, conversation):
    post(api, conversation.pk, users[0], content="first", key="k")
    response = post(api, conversation.pk, users[0], content="second", key="k")
    assert response.status_code == 422
    assert response.json() == REUSED
    assert rows() == (1, 1, 1)


@pytest.mark.django_db
def test_same_key_in_another_conversation_is_422(api, users, conversation):
    other = services.conversation_create(participant_ids=[users[0].pk, users[2].pk])
    post(api, conversation.pk, users[0], key="k")
    response = post(api, other.pk, users[0], key="k")
    assert response.status_code == 422
    assert response.json() == REUSED
    assert Message.objects.filter(conversation=other).count() == 0


@pytest.mark.django_db
def test_keys_belong_to_their_user(api, users, conversation):
    """Two users who happen to pick the same key each get their own message."""
    mine = post(api, conversation.pk, users[0], key="shared-name")
    theirs = post(api, conversation.pk, users[1], key="shared-name")
    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert [mine.json()["message"]["index"], theirs.json()["message"]["index"]] == [1, 2]
    assert rows() == (2, 2, 2)


@pytest.mark.django_db
def test_posts_without_a_key_are_not_deduplicated(api, users, conversation):
    assert post(api, conversation.pk, users[0]).json()["message"]["index"] == 1
    assert post(api, conversation.pk, users[0]).json()["message"]["index"] == 2
    assert rows() == (2, 2, 0)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "key",
    ["", "x" * 256, "has space", "naïve", "tab\tinside"],
    ids=["empty", "too-long", "space", "non-ascii", "control"],
)
def test_malformed_key_is_400_and_stores_nothing(api, users, conversation, key):
    response = post_message(api, conversation.pk, users[0].pk, "hi", HTTP_IDEMPOTENCY_KEY=key)
    assert response.status_code == 400
    assert response.json() == MALFORMED
    assert rows() == (0, 0, 0)


@pytest.mark.django_db
def test_longest_key_and_uuid_are_accepted(api, users, conversation):
    assert post(api, conversation.pk, users[0], key="k" * 255).status_code == 201
    assert post(api, conversation.pk, users[0], key="0b6ad8a4-5d55-4c36-9f7e-2b1c0c8f3a10").status_code == 201


@pytest.mark.django_db
def test_expired_key_posts_again(api, users, conversation, settings):
    settings.IDEMPOTENCY_KEY_TTL = 3600
    first = post(api, conversation.pk, users[0], key="old")
    IdempotencyKey.objects.update(created_at=timezone.now() - timedelta(hours=2))

    again = post(api, conversation.pk, users[0], content="different now", key="old")

    assert again.status_code == 201
    assert "Idempotent-Replayed" not in again
    assert again.json()["message"]["index"] == 2
    assert again.json()["message"]["id"] != first.json()["message"]["id"]
    record = IdempotencyKey.objects.get()
    assert record.message_id == again.json()["message"]["id"]


@pytest.mark.django_db
def test_non_member_with_a_key_is_refused_before_the_key_is_looked_at(api, users, conversation):
    post(api, conversation.pk, users[0], key="k")
    response = post(api, conversation.pk, users[2], key="k")
    assert response.status_code == 400
    assert response.json() == {"error": f"User with id {users[2].pk} is not in conversation"}
    assert rows() == (1, 1, 1)


@pytest.mark.django_db
def test_purge_command_deletes_only_expired_keys(api, users, conversation, settings):
    settings.IDEMPOTENCY_KEY_TTL = 60
    for key in ("a", "b", "c"):
        post(api, conversation.pk, users[0], content=key, key=key)
    IdempotencyKey.objects.filter(key__in=["a", "b"]).update(created_at=timezone.now() - timedelta(minutes=5))

    dry = StringIO()
    call_command("purge_idempotency_keys", "--dry-run", stdout=dry)
    assert dry.getvalue().strip() == "2 expired Idempotency-Key(s) would be deleted."
    assert IdempotencyKey.objects.count() == 3

    out = StringIO()
    call_command("purge_idempotency_keys", stdout=out)
    assert out.getvalue().strip() == "Deleted 2 Idempotency-Key(s) older than 60s."
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["c"]
    assert Message.objects.count() == 3  # the messages stay; only the keys are forgotten

    again = StringIO()
    call_command("purge_idempotency_keys", stdout=again)
    assert again.getvalue().strip() == "Deleted 0 Idempotency-Key(s) older than 60s."


@pytest.mark.django_db(transaction=True)
def test_concurrent_posts_with_the_same_key_make_one_message():
    """The unique (user, key) constraint decides; every loser answers with the winner's message."""
    alice, bob = User.objects.create(name="alice"), User.objects.create(name="bob")
    conversation = services.conversation_create(participant_ids=[alice.pk, bob.pk])
    racers = 12
    barrier = threading.Barrier(racers)

    def race(_):
        try:
            barrier.wait(timeout=30)
            response = post(APIClient(), conversation.pk, alice, content="only once", key="double-click")
            return response.status_code, response.json()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=racers) as pool:
        results = list(pool.map(race, range(racers)))

    assert [status for status, _ in results] == [201] * racers
    assert len({body["message"]["id"] for _, body in results}) == 1
    assert {body["message"]["index"] for _, body in results} == {1}
    assert rows() == (1, 1, 1)
    # The losers' transactions rolled back whole, counter included: the next index is 2.
    assert post(APIClient(), conversation.pk, bob).json()["message"]["index"] == 2


@pytest.mark.django_db
def test_post_that_loses_the_key_race_answers_with_the_winners_message(api, users, conversation, monkeypatch):
    """Deterministic form of the race above: the loser's lookup ran before the winner committed."""
    winner = post(api, conversation.pk, users[0], key="k")
    lookup = services._idempotent_replay
    calls = []

    def lookup_before_the_winner_committed(**kwargs):
        calls.append(kwargs)
        return None if len(calls) == 1 else lookup(**kwargs)

    monkeypatch.setattr(services, "_idempotent_replay", lookup_before_the_winner_committed)
    loser = post(api, conversation.pk, users[0], key="k")

    assert len(calls) == 2  # the miss, then the look-up after the unique constraint refused the key
    assert loser.status_code == 201
    assert loser["Idempotent-Replayed"] == "true"
    assert loser.json() == winner.json()
    assert rows() == (1, 1, 1)
    assert post(api, conversation.pk, users[0]).json()["message"]["index"] == 2
