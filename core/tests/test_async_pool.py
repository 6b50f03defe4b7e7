"""The live listener's read pool (core.db.async_pool) against the real PostgreSQL, through a TCP proxy the test cuts."""

from __future__ import annotations

import asyncio
import time

import pytest
from django.db import connection

from core.db.async_pool import AsyncReadPool, DeadlinePassed, django_connect_params
from tests.support.tcp_proxy import BLACKHOLE, TcpProxy

pytestmark = pytest.mark.django_db(transaction=True)

DEADLINE = 1.0


def test_a_read_on_a_database_gone_silent_fails_at_its_deadline_not_after_psycopgs_cancel():
    """A link that goes silent under a kept connection: the read answers DeadlinePassed at its deadline.

    psycopg answers a cancelled statement by asking the server to cancel it and waiting for it, up to 5 s
    each: on a cut link between two hosts a swarm drill saw a read answer its 503 after 11 s, its deadline 6 s.
    """
    settings = connection.settings_dict
    with TcpProxy(int(settings["PORT"]), settings["HOST"]) as proxy:
        params = {**django_connect_params(prepare=False), "host": "127.0.0.1", "port": proxy.port}
        pool = AsyncReadPool(lambda: params, lambda: DEADLINE)

        async def cut_under_a_kept_connection() -> tuple[tuple, float]:
            first = await pool.fetchone("SELECT 1", {})  # the connection the pool then keeps
            proxy.cut(BLACKHOLE)
            started = time.monotonic()
            with pytest.raises(DeadlinePassed):
                await pool.fetchone("SELECT 2", {})
            took = time.monotonic() - started
            proxy.restore()
            await pool.close()
            return first, took

        first, took = asyncio.run(cut_under_a_kept_connection())
    assert first == (1,)
    assert DEADLINE <= took < DEADLINE + 1.0, f"the read failed {took:.1f}s after it began"


def test_a_read_whose_caller_is_cancelled_is_held_until_it_ends_and_the_pool_serves_on():
    """gunicorn cancels a gone client's request: its read is abandoned as one past its deadline is, not dropped."""
    settings = connection.settings_dict
    with TcpProxy(int(settings["PORT"]), settings["HOST"]) as proxy:
        params = {**django_connect_params(prepare=False), "host": "127.0.0.1", "port": proxy.port}
        pool = AsyncReadPool(lambda: params, lambda: DEADLINE * 30)

        async def cancel_a_read_on_a_silent_link() -> tuple[int, tuple]:
            await pool.fetchone("SELECT 1", {})
            proxy.cut(BLACKHOLE)
            caller = asyncio.ensure_future(pool.fetchone("SELECT 2", {}))
            await asyncio.sleep(DEADLINE / 10)  # the statement is sent and unanswered
            caller.cancel()
            with pytest.raises(asyncio.CancelledError):
                await caller
            held = len(pool._abandoned)
            proxy.restore()
            after = await pool.fetchone("SELECT 3", {})
            await pool.close()
            return held, after

        held, after = asyncio.run(cancel_a_read_on_a_silent_link())
    assert held == 1
    assert after == (3,)
