"""PostgreSQL failures are bounded: 503 in bounded time, /health fails within a second, recovery with no restart.

A real gunicorn (2 workers, persistent connections) reaches the real PostgreSQL
through a TCP proxy that the test owns and cuts:

- `reset`: the server is gone; connections are reset and new ones refused;
- `blackhole`: the server stops answering; connections stay open but silent,
  which neither timeout sees and `core.db.deadline` has to cut.

A poster keeps posting through the outage; afterwards every message it was
told 201 about is in the database, with gap-free indexes.
"""

import threading
import time

import psycopg
import pytest
from django.db import connection

from conversations.models import Message
from core.db import liveness
from core.http.errors import DATABASE_UNAVAILABLE
from outbox.models import OutboxEvent
from tests.support.live_service import database_env, seed_chat
from tests.support.openapi_check import ResponseChecker, served_schema
from tests.support.processes import wait_until
from tests.support.service import Answer, ServiceProcess, call
from tests.support.tcp_proxy import BLACKHOLE, RESET, TcpProxy

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, reset_sequences=True)]

# Both timeouts at 2 s, so a request's database deadline is 2 + 2 + 1 = 5 s.
TIMEOUTS = {"PG_CONNECT_TIMEOUT": "2s", "PG_STATEMENT_TIMEOUT": "2s"}
BOUND = 10.0  # generous: every request must end well within this while the database is away


@pytest.fixture
def chat():
    return seed_chat()


@pytest.fixture
def proxy():
    settings = connection.settings_dict
    proxy = TcpProxy(int(settings["PORT"]), settings["HOST"]).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def service(proxy, chat, tmp_path):
    env = database_env(PGHOST="127.0.0.1", PGPORT=str(proxy.port), WEB_CONCURRENCY="2", WEB_THREADS="4", **TIMEOUTS)
    service = ServiceProcess(env, tmp_path / "service.log").start()
    try:
        yield service
    finally:
        service.stop()


def post_message(service: ServiceProcess, conversation, user, content: str) -> Answer:
    """A message post to the live instance, as `user`."""
    return call(
        service.url,
        "POST",
        f"/conversations/{conversation.pk}/messages",
        {"content": content},
        {"User-Id": str(user.pk)},
    )


class Poster(threading.Thread):
    """Posts numbered messages until stopped (at most `limit`), keeping every answer."""

    def __init__(self, service, conversation, user, limit=400):
        super().__init__(daemon=True)
        self.service, self.conversation, self.user, self.limit = service, conversation, user, limit
        self.answers = []
        self.stopped = threading.Event()
        self.last_started = 0.0  # time.monotonic() when the latest post was sent

    def run(self):
        for n in range(self.limit):
            if self.stopped.is_set():
                return
            self.last_started = time.monotonic()
            answer = post_message(self.service, self.conversation, self.user, f"poster {n}")
            self.answers.append((f"poster {n}", answer))
            self.stopped.wait(0.02)  # a steady trickle of posts, not a burst


def requests_of_every_kind(users, conversation):
    """(method, path template, path, body, headers): one request per operation of the description."""
    user = {"User-Id": str(users[0].pk)}
    messages = f"/conversations/{conversation.pk}/messages"
    return [
        ("GET", "/health", "/health", None, {}),
        ("GET", "/users", "/users", None, {}),
        ("POST", "/users", "/users", {"name": "Newcomer"}, {}),
        ("GET", "/conversations", "/conversations", None, user),
        ("POST", "/conversations", "/conversations", {"participant_ids": [users[1].pk, users[2].pk]}, {}),
        ("GET", "/conversations/{conversation_id}/messages", messages, None, {}),
        (
            "POST",
            "/conversations/{conversation_id}/messages",
            messages,
            {"content": "during"},
            {**user, "Idempotency-Key": "during-outage"},
        ),
        (
            "POST",
            "/conversations/{conversation_id}/view_horizon",
            f"/conversations/{conversation.pk}/view_horizon",
            {"index": 1},
            user,
        ),
    ]


def assert_nothing_accepted_was_lost(conversation, accepted):
    stored = dict(Message.objects.filter(conversation=conversation).values_list("id", "content"))
    for content, body in accepted:
        assert stored.get(body["message"]["id"]) == content, f"201 for {content!r} but not stored"
    indexes = list(Message.objects.filter(conversation=conversation).order_by("index").values_list("index", flat=True))
    assert indexes == list(range(1, len(indexes) + 1))
    assert OutboxEvent.objects.count() == Message.objects.count()


@pytest.mark.parametrize("mode", [RESET, BLACKHOLE])
def test_outage_answers_503_in_bounded_time_and_recovers_without_restart(service, proxy, chat, mode):
    users, conversation = chat
    checker = ResponseChecker(served_schema())
    accepted = []
    for n in range(4):  # both workers now hold persistent connections through the proxy
        answer = post_message(service, conversation, users[0], f"before {n}")
        assert answer.status == 201
        accepted.append((f"before {n}", answer.json()))
    poster = Poster(service, conversation, users[1])
    poster.start()
    wait_until(lambda: len(poster.answers) >= 3, 30, what="the poster to post before the outage")

    cut_at = time.monotonic()
    proxy.cut(mode)
    wait_until(lambda: poster.last_started > cut_at, 30, what="the poster to post into the outage")
    for method, template, path, body, headers in requests_of_every_kind(users, conversation):
        if path == "/health":  # a check made before the cut stands for up to a second (core.db.liveness)
            answer = wait_until(
                lambda: (health := call(service.url, "GET", "/health")).status == 503 and health,
                liveness.MAX_AGE + BOUND,
                what="/health failing within a second of the cut",
            )
        else:
            answer = call(service.url, method, path, body, headers)
        assert answer.seconds < BOUND, f"{method} {path} took {answer.seconds:.1f}s"
        if path == "/health":
            assert (answer.status, answer.body) == (503, b"Database unavailable")
        else:
            assert (answer.status, answer.json()) == (503, {"error": DATABASE_UNAVAILABLE}), (method, path)
            assert answer.headers["Retry-After"] == "1"
        checker.check_live(method, service.url + path, template, answer.status, answer.body, answer.headers)

    proxy.restore()
    wait_until(lambda: call(service.url, "GET", "/health").status == 200, timeout=30, what="health after restore")
    after = post_message(service, conversation, users[0], "after")
    assert after.status == 201
    accepted.append(("after", after.json()))
    answered_before = len(poster.answers)
    wait_until(
        lambda: any(answer.status == 201 for _, answer in poster.answers[answered_before:]),
        30,
        what="the poster to post after the outage",
    )
    poster.stopped.set()
    poster.join(timeout=60)

    statuses = [answer.status for _, answer in poster.answers]
    assert set(statuses) <= {201, 503}, statuses
    assert 503 in statuses and statuses[-1] == 201
    assert max(answer.seconds for _, answer in poster.answers) < BOUND
    accepted += [(content, answer.json()) for content, answer in poster.answers if answer.status == 201]
    assert_nothing_accepted_was_lost(conversation, accepted)
    assert service.process.poll() is None  # the same instance served throughout: no restart
    log = service.log_path.read_text()
    assert "WORKER TIMEOUT" not in log and "Internal Server Error" not in log, log[-4000:]


def test_a_statement_past_the_statement_timeout_is_a_503_and_stores_nothing(service, chat):
    """Another session holds the conversation's counter row: the post waits, PostgreSQL cancels it at 2 s."""
    users, conversation = chat
    settings = connection.settings_dict
    with psycopg.connect(
        host=settings["HOST"], port=settings["PORT"], user=settings["USER"], dbname=settings["NAME"]
    ) as blocker:
        blocker.execute("SELECT 1 FROM channels WHERE id = %s FOR UPDATE", [conversation.pk])
        answer = post_message(service, conversation, users[0], "blocked")
        blocker.rollback()
    assert (answer.status, answer.json()) == (503, {"error": DATABASE_UNAVAILABLE})
    assert 1.5 < answer.seconds < BOUND
    assert Message.objects.count() == 0 and OutboxEvent.objects.count() == 0

    again = post_message(service, conversation, users[0], "free")
    assert again.status == 201
    assert again.json()["message"]["index"] == 1
