"""The live listener's own reads answer exactly what Django's route answers.

NGINX sends plain JSON reads of a message page and of the conversation list
to the instance's live listener, which answers them on its event loop
(conversations/live/reads.py) instead of through Django. Each case here is
asked of Django's route (the test client, the whole middleware stack) and of
the listener's reads, with the same request id, and must get the same status,
the same headers and the same body bytes. Requests the listener's reads do not
cover (HTML, `?format=`, another method or path, a Host Django would judge)
must be left to Django.

The listener reads on its own asyncio connections, outside the test's
transaction, so these tests commit their rows (`transactional_db`).
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest
from django.test import Client

from conversations.live.reads import NativeReads
from conversations.models import Conversation, Message, User
from core.http import errors

pytestmark = pytest.mark.django_db(transaction=True)

REQUEST_ID = "native-reads-test"
HOST = "messenger.example:8085"


@pytest.fixture
def chat():
    alice, bob, carol = (User.objects.create(name=name) for name in ("Alice", "Bob", 'Carol "C" \u2028 😀'))
    pair = Conversation.objects.create(user_low=alice, user_high=bob, last_index=5)
    pair.participants.set([alice, bob])
    other = Conversation.objects.create(user_low=alice, user_high=carol, last_index=0)
    other.participants.set([alice, carol])
    at = datetime(2026, 12, 7, 1, 2, 3, 456789, tzinfo=timezone.utc)
    texts = ["plain", 'quote " backslash \\', "controls \x01\t\n", "separators \u2028 \u2029", "漢字 😀"]
    for index, text in enumerate(texts, start=1):
        Message.objects.create(
            conversation=pair, user=(alice, bob)[index % 2], content=text, index=index, inserted_at=at
        )
    return {"alice": alice.pk, "bob": bob.pk, "carol": carol.pk, "pair": pair.pk, "other": other.pk}


def django_answer(path: str, query: str, headers: dict) -> tuple:
    response = Client().generic("GET", f"{path}?{query}" if query else path, **headers)
    return (
        response.status_code,
        sorted((name.lower(), value) for name, value in response.headers.items()),
        response.content,
    )


def native_answers(requests: list[tuple[str, str, dict[str, str]]]) -> list[tuple | None]:
    async def main():
        reads = NativeReads()
        try:
            results = []
            for path, query, headers in requests:
                environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query, "wsgi.url_scheme": "http"}
                environ.update(headers)
                answer = await reads.answer(environ)
                results.append(
                    None
                    if answer is None
                    else (
                        answer.status,
                        sorted(
                            [(name.decode(), value.decode()) for name, value in answer.headers]
                            + [("content-length", str(len(answer.body)))]
                        ),
                        answer.body,
                    )
                )
            return results
        finally:
            await reads.close()

    return asyncio.run(main())


def headers_for(user_id: str | None = None, **extra: str) -> dict[str, str]:
    headers = {"HTTP_HOST": HOST, "HTTP_X_REQUEST_ID": REQUEST_ID, **extra}
    if user_id is not None:
        headers["HTTP_USER_ID"] = user_id
    return headers


def cases(chat) -> list[tuple[str, str, dict[str, str]]]:
    pair, other, alice, carol = (str(chat[k]) for k in ("pair", "other", "alice", "carol"))
    page = f"/conversations/{pair}/messages"
    return [
        (page, "", headers_for()),
        (page, "", headers_for(alice)),
        (page, "limit=2", headers_for(alice)),  # a `next` link, absolute with the Host
        (page, "after_index=2&limit=2", headers_for(alice)),
        (page, "limit=2&limit=3&after_index=1", headers_for(alice)),  # the last of a repeated name
        (page, "after_index=5", headers_for(alice)),  # empty
        (page, "after_index=99", headers_for(carol)),  # not a participant: allowed while reads are open
        (page, "limit=0", headers_for(alice)),
        (page, "limit=x", headers_for(alice)),
        (page, "after_index=-1", headers_for(alice)),
        (page, "after_index=%C3%A9&limit=%31", headers_for(alice)),  # percent-encoded
        (page, "wait=999", headers_for(alice)),  # refused by the page itself
        (page, "wait=", headers_for(alice)),
        (page, "", headers_for("987654")),  # names no user
        (page, "", headers_for("x")),
        (page, "", headers_for(" 0 ")),
        (page, "", headers_for(alice, HTTP_ACCEPT="application/json")),
        (page, "", headers_for(alice, HTTP_ACCEPT="*/*")),
        ("/conversations/987654/messages", "", headers_for(alice)),
        ("/conversations/0/messages", "", headers_for(alice)),
        ("/conversations/99999999999999999999/messages", "", headers_for(alice)),
        (f"/conversations/{other}/messages", "", headers_for(carol)),
        ("/conversations", "", headers_for()),
        ("/conversations", "", headers_for(alice)),
        ("/conversations", "limit=1", headers_for(alice)),
        ("/conversations", "after_id=1&limit=1", headers_for(alice)),
        ("/conversations", "", headers_for(carol)),
        ("/conversations", "", headers_for("987654")),
        ("/conversations", "limit=1001", headers_for(alice)),
        ("/health", "", headers_for()),
    ]


def test_every_read_is_answered_as_django_answers_it(chat):
    requests = cases(chat)
    expected = [django_answer(*request) for request in requests]
    assert native_answers(requests) == expected


def test_members_only_reads_are_refused_as_django_refuses_them(chat, settings):
    settings.READS_REQUIRE_MEMBER = True
    pair, alice, carol = (str(chat[k]) for k in ("pair", "alice", "carol"))
    page = f"/conversations/{pair}/messages"
    requests = [(page, "", headers_for()), (page, "", headers_for(carol)), (page, "", headers_for(alice))]
    expected = [django_answer(*request) for request in requests]
    assert [status for status, _, _ in expected] == [400, 400, 200]
    assert native_answers(requests) == expected


def test_what_the_reads_do_not_cover_is_left_to_django(chat):
    page = f"/conversations/{chat['pair']}/messages"
    left = [
        (page, "", headers_for(HTTP_ACCEPT="text/html")),  # the browsable API
        (page, "format=json", headers_for()),
        ("/conversations/x/messages", "", headers_for()),
        ("/users", "", headers_for()),
        (page, "", {"HTTP_X_REQUEST_ID": REQUEST_ID}),  # no Host: Django decides what it is
        (page, "", headers_for(HTTP_HOST="bad host")),
        (page, "after_index=\u00e9", headers_for()),  # not plain ASCII
    ]
    assert native_answers(left) == [None] * len(left)


def test_a_database_that_does_not_answer_is_a_503_in_the_contracts_shape(chat, settings, monkeypatch):
    monkeypatch.setattr("conversations.live.reads._connect_params", lambda: {"host": "127.0.0.1", "port": 9})
    settings.DATABASE_REQUEST_DEADLINE = 5
    page = f"/conversations/{chat['pair']}/messages"
    (status, headers, body), (health_status, _, health_body) = native_answers(
        [(page, "", headers_for()), ("/health", "", headers_for())]
    )
    assert (status, dict(headers)["retry-after"], body) == (
        503,
        "1",
        f'{{"error":"{errors.DATABASE_UNAVAILABLE}"}}'.encode(),
    )
    assert (health_status, health_body) == (503, b"Database unavailable")
