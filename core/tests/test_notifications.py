"""What a Hub remembers of its wake-ups (`woken_since`), without a database: the wake-ups are driven directly."""

from __future__ import annotations

from core.db import notifications
from core.db.notifications import Hub


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
