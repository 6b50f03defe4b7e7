"""Members-only reads hold for waiters on a real instance: gunicorn, its live listener and the test database.

An instance with READS_REQUIRE_MEMBER on (the deploy scripts keep the tutorial's open reads, so this one is
started on its own): a long-poll or a stream is refused at once unless its User-Id names a participant, and a
participant's long-poll gets the message another participant posts through the ordinary port meanwhile.
"""

from __future__ import annotations

import json
import threading

import pytest

from conversations.refusals import MISSING_USER_ID, NOT_IN_CONVERSATION
from tests.support.live import established_to, get
from tests.support.live_service import database_env, seed_chat
from tests.support.processes import free_port, wait_until
from tests.support.service import ServiceProcess, call

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, reset_sequences=True)]


@pytest.fixture
def members_only(tmp_path):
    users, conversation = seed_chat()  # users 1, 2 and 3; conversation 1 between users 1 and 2
    live_port = free_port()
    service = ServiceProcess(
        database_env(READS_REQUIRE_MEMBER="true", LIVE_PORT=str(live_port)), tmp_path / "service.log"
    ).start()
    try:
        yield service, live_port, conversation.pk
    finally:
        service.stop()


def test_a_waiter_that_may_not_read_is_refused_before_it_waits(members_only):
    service, live_port, conversation = members_only
    page = f"/conversations/{conversation}/messages?wait=30"
    outsider = NOT_IN_CONVERSATION.format(user_id=3)
    cases = [
        (page, {}, 400, MISSING_USER_ID),
        (page, {"User-Id": "3"}, 400, outsider),
        (f"/conversations/{conversation}/stream", {"User-Id": "3"}, 400, outsider),
    ]
    for path, headers, status, error in cases:
        answer, body, seconds = get("127.0.0.1", live_port, path, headers)
        assert (answer, json.loads(body)) == (status, {"error": error}), (path, headers)
        assert seconds < 5, (path, headers)  # refused, not held until the wait's 30 s


def test_a_participant_waiting_gets_the_message_the_other_participant_posts(members_only):
    service, live_port, conversation = members_only
    answers: list[tuple[int, bytes, float]] = []
    waiter = threading.Thread(
        target=lambda: answers.append(
            get("127.0.0.1", live_port, f"/conversations/{conversation}/messages?wait=30", {"User-Id": "2"})
        )
    )
    waiter.start()
    wait_until(lambda: established_to([("127.0.0.1", live_port)]) == 1, 10, what="the waiter held by the listener")
    posted = call(
        service.url, "POST", f"/conversations/{conversation}/messages", {"content": "for members"}, {"User-Id": "1"}
    )
    assert posted.status == 201, posted.body
    waiter.join(timeout=40)
    [(status, body, _)] = answers
    assert status == 200
    assert [m["content"] for m in json.loads(body)["messages"]] == ["for members"]
