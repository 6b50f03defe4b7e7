"""The live listener's application in-process: refusals before any wait, members only, wake-ups on commit.

The ASGI app (conversations.live.app) is driven directly, on the test
database; its reads go through the ordinary Django application in its thread
pool, so what a waiter answers is held to the ordinary route's bytes here.
Transactions are real (the trigger notifies on commit only).
"""

from __future__ import annotations

import asyncio
import threading

import psycopg
import pytest
from django.core.wsgi import get_wsgi_application
from django.db import connections
from django.test import Client

from conversations.live.app import LiveApp
from conversations.tests.client import post_message
from core.db.async_pool import django_connect_params
from tests.support.openapi_check import ResponseChecker, served_schema

pytestmark = pytest.mark.django_db(transaction=True)

STREAM = "/conversations/{conversation_id}/stream"
MESSAGES = "/conversations/{conversation_id}/messages"
# Long enough that a test that waited by mistake fails its asyncio bound.
LONG_WAIT = 30
BOUND = 10


async def _request(
    app: LiveApp, path: str, query: str = "", headers: dict | None = None, sent: list[dict] | None = None
) -> tuple[int, dict, bytes]:
    """One GET through the ASGI app: (status, headers, the whole body); `sent` sees each ASGI message as it goes.

    It sends a Host header, as every client through NGINX does, so plain reads are answered on the app's loop.
    """
    headers = {"Host": "testserver", **(headers or {})}
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 5000),
        "scheme": "http",
        "http_version": "1.1",
    }
    sent = [] if sent is None else sent
    requested = False

    async def receive() -> dict:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the client never goes away
        raise AssertionError("unreachable")

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


async def _post_from_another_thread(api, conversation_id: int, user_id: int, content: str) -> None:
    """Post as another client would, in a thread of its own (a commit the app is notified of), and close that
    thread's database connection, so none outlives the test."""

    def post() -> None:
        try:
            post_message(api, conversation_id, user_id, content)
        finally:
            connections.close_all()

    def start_and_join() -> None:
        poster = threading.Thread(target=post)
        poster.start()
        poster.join()

    await asyncio.get_running_loop().run_in_executor(None, start_and_join)


def _run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, BOUND))


def _with_app(work):
    """Run `work(app)` inside a started live app, stopping it after."""

    async def main():
        app = LiveApp(get_wsgi_application())
        app.start()
        try:
            return await work(app)
        finally:
            await app.stop()

    return _run(main())


async def _subscribed(app: LiveApp, count: int) -> None:
    """Until `count` waiters are subscribed and the LISTEN connection is up (the caller's bound applies)."""
    hub = app.start()
    await hub.listening.wait()
    while hub.waiter_count() < count:
        await asyncio.sleep(0.01)


def _ordinary(path: str, **meta: str) -> tuple[int, bytes]:
    """The ordinary route's answer in-process; headers as Django's META keys (HTTP_USER_ID)."""
    response = Client().get(path, headers={k.removeprefix("HTTP_").replace("_", "-"): v for k, v in meta.items()})
    return response.status_code, response.content


@pytest.fixture(params=[False, True], ids=["reads-open", "reads-members-only"])
def switch(request, settings):
    settings.READS_REQUIRE_MEMBER = request.param
    return request.param


def test_a_refused_waiter_gets_the_ordinary_routes_refusal_at_once(users, conversation, switch):
    """Missing User-Id (members only), an outsider, an unknown user, no such conversation: no wait, same bytes."""
    cases = [
        (f"/conversations/{conversation.pk}/messages", {}),
        (f"/conversations/{conversation.pk}/messages", {"User-Id": str(users[2].pk)}),
        (f"/conversations/{conversation.pk}/messages", {"User-Id": "999999"}),
        ("/conversations/999999/messages", {"User-Id": str(users[0].pk)}),
    ]

    refused = []
    for path, headers in cases:
        expected = _ordinary(path, **{f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items()})
        if expected[0] != 200:  # an allowed read (reads open) would wait: the tests below cover it
            refused.append((path, headers, expected))
    assert len(refused) == (4 if switch else 2)

    async def work(app):
        return [await _request(app, path, f"wait={LONG_WAIT}", headers) for path, headers, _ in refused]

    for (path, headers, expected), (status, _, body) in zip(refused, _with_app(work), strict=True):
        assert (status, body) == expected, (path, headers)


def test_an_outsider_cannot_open_a_stream_when_reads_are_members_only(users, conversation, settings):
    settings.READS_REQUIRE_MEMBER = True

    async def work(app):
        return await _request(app, f"/conversations/{conversation.pk}/stream", "", {"User-Id": str(users[2].pk)})

    status, headers, body = _with_app(work)
    assert (status, body) == (400, f'{{"error":"User with id {users[2].pk} is not in conversation"}}'.encode())
    assert headers["content-type"] == "application/json"


def test_a_member_waiting_gets_the_message_committed_meanwhile(api, users, conversation, settings):
    settings.READS_REQUIRE_MEMBER = True

    async def work(app):
        waiter = asyncio.ensure_future(
            _request(
                app, f"/conversations/{conversation.pk}/messages", f"wait={LONG_WAIT}", {"User-Id": str(users[1].pk)}
            )
        )
        await _subscribed(app, 1)
        await _post_from_another_thread(api, conversation.pk, users[0].pk, "while you wait")
        return await waiter

    status, _, body = _with_app(work)
    assert status == 200
    assert body == _ordinary(f"/conversations/{conversation.pk}/messages", HTTP_USER_ID=str(users[1].pk))[1]
    assert b'"content":"while you wait"' in body


def test_a_waiter_cancelled_as_gunicorn_cancels_a_gone_clients_request_leaves_nothing_behind(api, users, conversation):
    """gunicorn cancels a request's task once its client has been gone for `asgi_disconnect_grace_period`; the
    long-poll does not watch for the disconnect itself. Cancelled, a waiter leaves its subscription, and the
    next waiter of the same page is still woken by the next commit."""
    path = f"/conversations/{conversation.pk}/messages"

    async def work(app):
        gone = asyncio.ensure_future(_request(app, path, f"wait={LONG_WAIT}", {"User-Id": str(users[1].pk)}))
        await _subscribed(app, 1)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        left = app.start().waiter_count()
        waiter = asyncio.ensure_future(_request(app, path, f"wait={LONG_WAIT}", {"User-Id": str(users[1].pk)}))
        await _subscribed(app, 1)
        await _post_from_another_thread(api, conversation.pk, users[0].pk, "after the other one left")
        return left, await waiter

    left, (status, _, body) = _with_app(work)
    assert left == 0
    assert status == 200 and b'"content":"after the other one left"' in body


def test_waiters_of_one_page_woken_by_one_commit_share_one_read(api, users, conversation):
    """A hundred waiters asking the same page: one read for the wake-up, each answer with its own request id."""
    reads = 0

    async def work(app):
        nonlocal reads
        call = app.ordinary_answer

        async def counted(environ):
            nonlocal reads
            reads += 1
            return await call(environ)

        app.ordinary_answer = counted
        await app.start().listening.wait()  # its own wake-up (everyone reads again) is behind us
        path = f"/conversations/{conversation.pk}/messages"
        waiters = [asyncio.ensure_future(_request(app, path, f"wait={LONG_WAIT}")) for _ in range(100)]
        await _subscribed(app, 100)
        while app._reads:  # the first reads are done: every waiter waits
            await asyncio.sleep(0.01)
        reads = 0
        await _post_from_another_thread(api, conversation.pk, users[0].pk, "to a hundred")
        return await asyncio.gather(*waiters)

    answers = _with_app(work)
    assert reads == 1
    assert {(status, body) for status, _, body in answers} == {
        (200, _ordinary(f"/conversations/{conversation.pk}/messages")[1])
    }
    assert len({headers["x-request-id"] for _, headers, _ in answers}) == 100


def test_without_wait_the_live_listener_answers_the_ordinary_bytes(api, users, conversation):
    post_message(api, conversation.pk, users[0].pk, "hello")
    path = f"/conversations/{conversation.pk}/messages"

    async def work(app):
        return await _request(app, path, "limit=1&wait=5")

    status, _, body = _with_app(work)
    assert (status, body) == _ordinary(f"{path}?limit=1")


def test_a_draining_listener_answers_its_waiters_with_their_empty_page(users, conversation):
    async def work(app):
        waiter = asyncio.ensure_future(_request(app, f"/conversations/{conversation.pk}/messages", f"wait={LONG_WAIT}"))
        await _subscribed(app, 1)
        app.drain()
        return await waiter

    assert _with_app(work)[::2] == (200, b'{"messages":[]}')


@pytest.mark.parametrize("wait", ["-1", "31", "1.5", "soon"])
def test_a_bad_wait_is_a_400(conversation, wait):
    async def work(app):
        return await _request(app, f"/conversations/{conversation.pk}/messages", f"wait={wait}")

    assert _with_app(work)[::2] == (400, b'{"error":"wait must be an integer from 0 to 30"}')


def test_the_stream_and_a_waited_page_answer_as_the_description_says(api, users, conversation):
    checker = ResponseChecker(served_schema())
    post_message(api, conversation.pk, users[0].pk, "described")
    stream, page = f"/conversations/{conversation.pk}/stream", f"/conversations/{conversation.pk}/messages"

    async def work(app):
        streaming = asyncio.ensure_future(_request(app, stream))
        await _subscribed(app, 1)
        app.drain()  # the stream ends, so its whole answer can be checked
        return [
            await streaming,
            await _request(app, "/conversations/999999/stream"),
            await _request(app, stream, headers={"Last-Event-ID": "soon"}),
            await _request(app, page, "wait=1"),
        ]

    answers = _with_app(work)
    assert answers[0][2] == (
        b"retry: 1000\n\nid: 1\ndata: "
        + _ordinary(page)[1].removeprefix(b'{"messages":[').removesuffix(b"]}")
        + b"\n\n"
    )
    for (status, headers, body), (path, pattern) in zip(
        answers,
        [(stream, STREAM), ("/conversations/999999/stream", STREAM), (stream, STREAM), (page, MESSAGES)],
        strict=True,
    ):
        # openapi-core reads a text/event-stream body as a string, JSON as bytes.
        sent = body.decode() if headers["content-type"].startswith("text/event-stream") else body
        checker.check_live("GET", f"http://testserver{path}", pattern, status, sent, headers)
    assert [status for status, _, _ in answers] == [200, 404, 400, 200]


def test_a_browsers_stream_that_accepts_only_event_streams_gets_its_events(api, users, conversation):
    """A browser's EventSource sends `Accept: text/event-stream`: the stream's page reads are still JSON (the page
    route would refuse that Accept with a 406), and the events are the page's messages."""
    post_message(api, conversation.pk, users[0].pk, "to a browser")
    stream, page = f"/conversations/{conversation.pk}/stream", f"/conversations/{conversation.pk}/messages"

    async def work(app):
        streaming = asyncio.ensure_future(_request(app, stream, headers={"Accept": "text/event-stream"}))
        await _subscribed(app, 1)
        app.drain()
        return await streaming

    status, headers, body = _with_app(work)
    assert (status, headers["content-type"]) == (200, "text/event-stream; charset=utf-8")
    item = _ordinary(page)[1].removeprefix(b'{"messages":[').removesuffix(b"]}")
    assert body == b"retry: 1000\n\nid: 1\ndata: " + item + b"\n\n"


def test_an_idle_stream_gets_heartbeat_comments(conversation, settings):
    settings.LIVE_HEARTBEAT = 0.05
    sent: list[dict] = []

    async def work(app):
        streaming = asyncio.ensure_future(_request(app, f"/conversations/{conversation.pk}/stream", sent=sent))
        while sum(m.get("body") == b": heartbeat\n\n" for m in sent) < 2:
            await asyncio.sleep(0.01)
        app.drain()
        return await streaming

    status, headers, body = _with_app(work)
    assert (status, headers["content-type"]) == (200, "text/event-stream; charset=utf-8")
    assert body.startswith(b"retry: 1000\n\n: heartbeat\n\n: heartbeat\n\n")
    assert b"id:" not in body


def _counting_reads(app: LiveApp) -> list[str]:
    """Every page read the app makes from now on (on its loop or through Django), by its query string."""
    reads: list[str] = []
    call = app.ordinary_answer

    async def counted(environ):
        reads.append(environ["QUERY_STRING"])
        return await call(environ)

    app.ordinary_answer = counted  # type: ignore[method-assign]
    return reads


def test_a_long_poll_right_after_its_answer_waits_without_reading_first(api, users, conversation):
    """A client's loop: answered up to index 1, it asks after 1 again; nothing was notified since the read that
    answered it, so the page is empty and allowed without a read. The message posted next is read once, and
    answered as the ordinary route answers it."""
    post_message(api, conversation.pk, users[0].pk, "first")
    path, user = f"/conversations/{conversation.pk}/messages", {"User-Id": str(users[1].pk)}
    page_of_one = _ordinary(path, HTTP_USER_ID=str(users[1].pk))

    async def work(app):
        await app.start().listening.wait()
        first = await _request(app, path, f"wait={LONG_WAIT}", user)
        reads = _counting_reads(app)
        waiter = asyncio.ensure_future(_request(app, path, f"after_index=1&wait={LONG_WAIT}", user))
        await _subscribed(app, 1)
        before_post = list(reads)
        await _post_from_another_thread(api, conversation.pk, users[0].pk, "second")
        return first, before_post, await waiter, reads

    first, before_post, second, reads = _with_app(work)
    assert first[::2] == page_of_one
    assert before_post == []
    assert reads == [f"after_index=1&wait={LONG_WAIT}"]
    assert second[::2] == (200, _ordinary(f"{path}?after_index=1", HTTP_USER_ID=str(users[1].pk))[1])
    assert b'"content":"second"' in second[2]


def test_a_message_stored_between_a_long_polls_answer_and_the_next_one_is_answered_at_once(api, users, conversation):
    """Posted while the client was between two long-polls (no waiter to wake): its notification marks what the
    listener remembered as old, so the next long-poll reads first and answers the message without waiting."""
    post_message(api, conversation.pk, users[0].pk, "first")
    path = f"/conversations/{conversation.pk}/messages"

    async def work(app):
        hub = app.start()
        await hub.listening.wait()
        await _request(app, path, f"wait={LONG_WAIT}")
        answered_at = hub.generation
        await _post_from_another_thread(api, conversation.pk, users[0].pk, "between")
        while not hub.woken_since(str(conversation.pk), answered_at):
            await asyncio.sleep(0.01)
        return await _request(app, path, f"after_index=1&wait={LONG_WAIT}")  # BOUND < LONG_WAIT: no wait

    status, _, body = _with_app(work)
    assert (status, body) == _ordinary(f"{path}?after_index=1")
    assert b'"content":"between"' in body


def test_a_long_poll_that_skipped_its_first_read_still_answers_its_empty_page_read_when_it_expires(
    api, users, conversation
):
    post_message(api, conversation.pk, users[0].pk, "first")
    path = f"/conversations/{conversation.pk}/messages"

    async def work(app):
        await app.start().listening.wait()
        await _request(app, path, "wait=1")
        reads = _counting_reads(app)
        return await _request(app, path, "after_index=1&wait=1"), reads

    (status, headers, body), reads = _with_app(work)
    assert (status, body) == _ordinary(f"{path}?after_index=1") == (200, b'{"messages":[]}')
    assert reads == ["after_index=1&wait=1"]  # read once, when the second ended
    assert headers["x-request-id"]


def test_only_the_same_request_but_its_after_index_skips_the_read(api, users, conversation, settings):
    """Another caller, another limit, another after_index: each reads first (an outsider is refused at once, 400
    as the page refuses it). A bad wait on the same request is refused by the read its no wait at all makes."""
    settings.READS_REQUIRE_MEMBER = True
    post_message(api, conversation.pk, users[0].pk, "first")
    path = f"/conversations/{conversation.pk}/messages"
    member = {"User-Id": str(users[1].pk)}

    async def work(app):
        await app.start().listening.wait()
        await _request(app, path, "wait=1", member)
        reads = _counting_reads(app)
        answers = [
            await _request(app, path, "after_index=1&wait=1", {"User-Id": str(users[2].pk)}),
            await _request(app, path, "after_index=0&wait=1", member),
            await _request(app, path, "after_index=01&wait=1", member),
            await _request(app, path, "after_index=1&limit=5&wait=1", member),
            await _request(app, path, "after_index=1&wait=soon", member),  # skips its read, waits not at all
        ]
        return answers, reads

    answers, reads = _with_app(work)
    assert [status for status, _, _ in answers] == [400, 200, 200, 200, 400]
    assert answers[-1][2] == b'{"error":"wait must be an integer from 0 to 30"}'
    # The outsider's refusal, the page at once, two empty pages read before and after their wait, the bad wait.
    assert len(reads) == 1 + 1 + 2 + 2 + 1


def _end_the_listen_connection() -> int:
    """pg_terminate_backend on the live app's LISTEN connection (a server restart or failover would end it
    too), from a connection of its own; how many backends it ended."""
    with psycopg.connect(**django_connect_params(prepare=False), autocommit=True) as conn:
        ended = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query LIKE 'LISTEN %' AND pid <> pg_backend_pid()"
        ).fetchone()
    return ended[0] if ended else 0


def test_a_waiter_gets_its_message_after_the_listen_connection_was_lost_and_made_again(api, users, conversation):
    """The LISTEN connection ended under a held long-poll: the hub connects again and wakes every waiter
    once (what was committed meanwhile is read), and the next commit's notification reaches the waiter."""
    path = f"/conversations/{conversation.pk}/messages"

    async def work(app):
        hub = app.start()
        waiting = asyncio.ensure_future(_request(app, path, f"wait={LONG_WAIT}"))
        await _subscribed(app, 1)
        before = hub.generation
        assert await asyncio.to_thread(_end_the_listen_connection) == 1
        while hub.generation == before or not hub.listening.is_set():  # lost, then up again: everyone woken
            await asyncio.sleep(0.01)
        assert not waiting.done()  # woken, it read its page again: still empty, so it waits on
        await _post_from_another_thread(api, conversation.pk, users[0].pk, "after the reconnect")
        return await waiting

    status, _, body = _with_app(work)
    assert status == 200 and b'"content":"after the reconnect"' in body
