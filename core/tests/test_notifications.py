"""A Hub's wake-ups without a database (driven directly): what it remembers of them (`woken_since`), and the
`Wake` each waiter holds."""

from __future__ import annotations

import asyncio

import pytest

from core.db import notifications
from core.db.notifications import Hub, Wake


def _hub() -> Hub:
    return Hub("messenger_messages", {})


def test_a_payload_is_woken_since_a_generation_only_by_its_own_later_notifications():
    hub = _hub()
    hub._wake("7")
    seen = hub.generation
    hub._wake("8")
    assert not hub.woken_since("7", seen)
    assert hub.woken_since("8", seen)
    hub._wake("7")
    assert hub.woken_since("7", seen)
    assert not hub.woken_since("9", 0)  # never notified


def test_waking_every_waiter_marks_every_payload_woken():
    hub = _hub()
    hub._wake("7")
    seen = hub.generation
    hub._wake()  # a reconnect: notifications may have been lost meanwhile
    assert hub.woken_since("7", seen) and hub.woken_since("never notified", seen)
    assert not hub.woken_since("7", hub.generation)


def test_a_forgotten_payload_counts_as_woken_when_it_may_have_been(monkeypatch):
    monkeypatch.setattr(notifications, "REMEMBERED_PAYLOADS", 2)
    hub = _hub()
    start = hub.generation
    hub._wake("1")
    after_first = hub.generation
    hub._wake("2")
    hub._wake("3")  # "1" is forgotten: it may have been notified up to after_first
    assert hub.woken_since("1", start)
    assert not hub.woken_since("1", after_first)
    assert not hub.woken_since("2", hub.generation) and hub.woken_since("2", start)
    assert len(hub._last_wake) == 2


# --- a waiter's Wake and its subscription -------------------------------------------------------------------------
# A wait that must not end is given this long, and must time out (a wait that must end is bounded at 5 s).
SHORT = 0.05


def test_a_wake_set_before_its_wait_answers_at_once_and_stays_set_until_cleared():
    async def scenario() -> None:
        wake = Wake()
        wake.set()
        async with asyncio.timeout(5):
            assert await wake.wait()
            assert await wake.wait()
        wake.clear()
        assert not wake.is_set()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(SHORT):
                await wake.wait()

    asyncio.run(scenario())


def test_a_waiter_is_woken_by_set_and_again_after_a_wait_that_timed_out():
    async def scenario() -> None:
        wake = Wake()
        with pytest.raises(TimeoutError):  # the future it awaited is cancelled with it
            async with asyncio.timeout(SHORT):
                await wake.wait()
        waiting = asyncio.ensure_future(wake.wait())
        await asyncio.sleep(0)  # let it start waiting
        assert not waiting.done()
        wake.set()
        async with asyncio.timeout(5):
            assert await waiting

    asyncio.run(scenario())


def test_a_second_waiter_on_one_wake_is_refused():
    async def scenario() -> None:
        wake = Wake()
        first = asyncio.ensure_future(wake.wait())
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="one waiter"):
            await wake.wait()
        wake.set()
        async with asyncio.timeout(5):
            assert await first

    asyncio.run(scenario())


def test_a_subscription_is_woken_by_its_own_payload_and_by_a_drain_and_forgotten_when_it_ends():
    hub = _hub()
    with hub.subscription("7") as seven, hub.subscription("8") as eight:
        assert hub.waiter_count() == 2
        hub._wake("7")
        assert seven.is_set() and not eight.is_set()
        hub.drain()
        assert eight.is_set()
    assert hub.waiter_count() == 0 and not hub._waiters
    with hub.subscription("9") as late:  # after a drain, every new waiter answers at once
        assert late.is_set()
