"""The per-request health check of kept connections (core/db/postgresql): no round trip while quiet.

Each test opens a connection of its own (Django's test connection sits in a
transaction, where the check always asks PostgreSQL), and closes it.
"""

import time

import pytest
from django.db import connection, connections
from django.db.backends.postgresql import base as django_postgresql

from tests.support.processes import wait_until

pytestmark = pytest.mark.django_db


@pytest.fixture
def kept():
    """A second connection to the test database, as a serving thread keeps one between requests."""
    wrapper = connections.create_connection("default")
    wrapper.ensure_connection()
    try:
        yield wrapper
    finally:
        wrapper.close()


@pytest.fixture
def asked(monkeypatch):
    """How often the check fell back to Django's `SELECT 1`, and what it answered."""
    answers = []
    real = django_postgresql.DatabaseWrapper.is_usable

    def recorded(self):
        answers.append(real(self))
        return answers[-1]

    monkeypatch.setattr(django_postgresql.DatabaseWrapper, "is_usable", recorded)
    return answers


def test_a_quiet_kept_connection_is_usable_without_asking_postgresql(kept, asked):
    assert kept.is_usable()
    assert asked == []


def test_a_connection_postgresql_closed_is_not_usable_and_is_replaced(kept, asked):
    backend = kept.connection.info.backend_pid
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [backend])
    wait_until(lambda: kept.is_usable() is False, timeout=10, what="the terminated connection to be seen as unusable")
    assert asked[-1] is False  # the socket turned readable, so PostgreSQL was asked, and the answer was no

    kept.close_if_unusable_or_obsolete()  # the next request starts: its first query checks the connection
    with kept.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        assert cursor.fetchone()[0] != backend


def test_a_connection_inside_a_transaction_is_always_asked(kept, asked):
    kept.set_autocommit(False)
    with kept.cursor() as cursor:
        cursor.execute("SELECT 1")
    assert kept.is_usable()
    assert asked == [True]
    kept.rollback()
    kept.set_autocommit(True)


def test_a_closed_connection_is_not_usable(kept, asked):
    kept.connection.close()
    started = time.monotonic()
    assert not kept.is_usable()
    assert time.monotonic() - started < 1
    assert asked == []
