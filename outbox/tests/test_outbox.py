"""The outbox side of events, with no broker: what a commit enqueues, and `manage.py outbox`.

The broker side (publishing, outages, workers) is in tests/test_events.py,
against the real RabbitMQ.
"""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import transaction
from django.utils import timezone

from conversations import events, services
from outbox import kicker, wire
from outbox.models import OutboxEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def kicks(monkeypatch):
    """Record the relay kicks instead of starting the enqueue thread (no broker in these tests)."""
    recorded = []
    monkeypatch.setattr(kicker._kicker, "kick", lambda: recorded.append(1))
    return recorded


def post(api, conversation, user, content="hello"):
    return api.post(f"/conversations/{conversation.pk}/messages", {"content": content}, HTTP_USER_ID=str(user.pk))


def outbox_report(*args) -> str:
    out = StringIO()
    call_command("outbox", *args, stdout=out)
    return out.getvalue()


def test_with_no_broker_configured_a_post_succeeds_and_its_event_waits_enqueueing_nothing(
    api, users, conversation, settings, kicks, django_capture_on_commit_callbacks
):
    settings.CELERY_BROKER_URL = None
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = post(api, conversation, users[0])
    assert response.status_code == 201
    assert callbacks == [kicker.relay_after_commit]
    assert kicks == []
    assert OutboxEvent.objects.filter(sent_at__isnull=True).count() == 1


def test_with_a_broker_configured_each_committed_post_kicks_the_relay_once_after_commit(
    api, users, conversation, settings, kicks, django_capture_on_commit_callbacks
):
    settings.CELERY_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        post(api, conversation, users[0], "one")
        post(api, conversation, users[1], "two")
    assert kicks == []  # nothing happens inside the transaction
    for callback in callbacks:
        callback()
    assert kicks == [1, 1]


def test_rolled_back_message_leaves_no_event_and_no_kick(
    users, conversation, settings, kicks, django_capture_on_commit_callbacks
):
    settings.CELERY_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with pytest.raises(RuntimeError):
            with transaction.atomic():
                services.message_create(conversation_id=conversation.pk, user_id=users[0].pk, content="never")
                raise RuntimeError("abort")
    assert callbacks == []
    assert kicks == []
    assert OutboxEvent.objects.count() == 0


def test_event_body_has_the_contract_keys_in_contract_order_whatever_the_stored_order():
    stored = {"participant_ids": [1, 2], "index": 3, "user_id": 1, "channel_id": 7, "type": "new_message"}
    assert wire.encode_body(events.NEW_MESSAGE, stored) == (
        b'{"type":"new_message","channel_id":7,"user_id":1,"index":3,"participant_ids":[1,2]}'
    )


def test_outbox_command_reports_nothing_pending():
    assert outbox_report() == "pending: 0\noldest pending: none\n"


def test_outbox_command_reports_pending_count_and_the_oldest_event_age(users, conversation):
    for content in ("one", "two"):
        services.message_create(conversation_id=conversation.pk, user_id=users[0].pk, content=content)
    ninety_seconds_ago = timezone.now() - timedelta(seconds=90)
    OutboxEvent.objects.filter(event_id=f"{conversation.pk}:1").update(created_at=ninety_seconds_ago)
    OutboxEvent.objects.filter(event_id=f"{conversation.pk}:2").update(sent_at=timezone.now())

    report = outbox_report()

    count_line, oldest_line, _ = report.split("\n")
    assert count_line == "pending: 1"
    assert oldest_line.startswith("oldest pending: 90.")
    assert oldest_line.endswith(f"s (event {conversation.pk}:1, attempts 0)")


def test_outbox_command_max_age_fails_when_the_oldest_event_is_older(users, conversation):
    services.message_create(conversation_id=conversation.pk, user_id=users[0].pk, content="late")
    OutboxEvent.objects.update(created_at=timezone.now() - timedelta(seconds=120))
    assert outbox_report("--max-age", "300").startswith("pending: 1\n")
    with pytest.raises(CommandError, match=r"The oldest pending event is 120\.\ds old, over --max-age 60s\."):
        outbox_report("--max-age", "60")


def test_outbox_command_relay_without_a_broker_is_a_clear_error(settings):
    settings.CELERY_BROKER_URL = None
    with pytest.raises(CommandError, match="No broker configured: set AMQPHOST"):
        outbox_report("--relay")
