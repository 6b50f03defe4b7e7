"""`/health` asks the database at most once a second per process, and never remembers a failure (core/db/liveness)."""

import pytest
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext

from core.db import liveness
from core.http import errors

pytestmark = pytest.mark.django_db


class Clock:
    """time.monotonic() as the module sees it, moved by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(liveness.time, "monotonic", clock)
    liveness.forget()
    yield clock
    liveness.forget()


@pytest.fixture
def database_down(monkeypatch):
    """From when called, every cursor of the test's connection fails as a lost database does."""

    def fail(*args, **kwargs):
        raise OperationalError("connection refused")

    return lambda: monkeypatch.setattr(connection, "cursor", fail)


def selects(client, calls: int) -> tuple[list[int], int]:
    with CaptureQueriesContext(connection) as queries:
        statuses = [client.get("/health").status_code for _ in range(calls)]
    return statuses, sum(1 for query in queries.captured_queries if query["sql"] == "SELECT 1")


def test_calls_within_a_second_ask_the_database_once(client, clock):
    statuses, asked = selects(client, 5)
    assert statuses == [200] * 5
    assert asked == 1


def test_a_check_older_than_a_second_is_made_again(client, clock):
    assert selects(client, 1) == ([200], 1)
    clock.now += liveness.MAX_AGE - 0.01
    assert selects(client, 1) == ([200], 0)
    clock.now += 0.02
    assert selects(client, 1) == ([200], 1)


def test_a_database_that_stops_answering_is_reported_within_a_second(client, clock, database_down):
    assert client.get("/health").status_code == 200
    database_down()
    clock.now += 0.5
    assert client.get("/health").status_code == 200  # the check of half a second ago still stands
    clock.now += 0.5
    response = client.get("/health")
    assert (response.status_code, response.content) == (503, b"Database unavailable")


def test_a_failed_check_is_never_remembered(client, clock, database_down, monkeypatch):
    database_down()
    assert client.get("/health").status_code == 503
    monkeypatch.undo()  # the database answers again, within the same instant
    monkeypatch.setattr(liveness.time, "monotonic", clock)
    assert selects(client, 1) == ([200], 1)


def test_a_failure_forgets_an_earlier_success(clock, database_down):
    assert liveness.database_answers()
    clock.now += liveness.MAX_AGE  # aged out: asked again, and the failure replaces the success
    database_down()
    assert not liveness.database_answers()
    assert not liveness.database_answers()


def test_a_request_that_lost_the_database_makes_the_next_check_ask(client, clock):
    assert selects(client, 1) == ([200], 1)
    answer = errors.exception_handler(OperationalError("server closed the connection unexpectedly"), {})
    assert answer.status_code == 503
    assert selects(client, 1) == ([200], 1)  # asked again at once, not answered from the earlier check
