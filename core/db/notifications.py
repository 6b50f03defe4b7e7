"""PostgreSQL notifications fanned out to asyncio waiters: one LISTEN connection per process.

A process that holds many waiters (conversations/live) keeps one async psycopg
connection that LISTENs on one channel, and wakes the waiters subscribed to a
notification's payload. A waiter holds an `asyncio.Event`, never a thread or a
connection of its own, so ten thousand idle waiters cost ten thousand small
objects.

A wake-up is only a hint to read again: whoever is woken reads what the
database holds, so a notification lost while the connection was down loses
nothing. When the connection comes back every waiter is woken once (whatever
was committed meanwhile is then read), and `recheck` lets a waiter read again
on its own after a while, as a backstop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, defaultdict
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

logger = logging.getLogger(__name__)

# Waits between connection attempts while PostgreSQL is unreachable: doubled up to the cap.
FIRST_RETRY_SECONDS = 0.2
LAST_RETRY_SECONDS = 5.0
# How many payloads' last wake-ups a hub remembers for `woken_since` (a few MB at most); past that it forgets the
# longest quiet ones, and answers "maybe" for them.
REMEMBERED_PAYLOADS = 100_000


class Hub:
    """One LISTEN connection and the waiters of each payload (a conversation id, as text)."""

    def __init__(self, channel: str, connect_params: dict[str, Any]):
        self.channel = channel
        self._params = connect_params
        self._waiters: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._task: asyncio.Task | None = None
        self.listening = asyncio.Event()  # set while the LISTEN connection is up
        self.draining = asyncio.Event()  # set on shutdown: every waiter answers now
        # How many wake-ups (notifications, reconnects, the drain) this hub has
        # had, whoever they were for: a read begun at generation g has seen every
        # commit whose wake-up came before it (see `generation`).
        self.generation = 0
        # The generation of each payload's last wake-up, the most recent last, and the latest generation a
        # payload not remembered may have been woken at (a wake-up of all, or a payload forgotten).
        self._last_wake: OrderedDict[str, int] = OrderedDict()
        self._forgotten = 0

    @contextmanager
    def subscription(self, key: str) -> Iterator[asyncio.Event]:
        """An event set whenever `key` is notified (or on reconnect or drain); subscribe before reading."""
        event = asyncio.Event()
        if self.draining.is_set():
            event.set()
        self._waiters[key].add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[key]

    def waiter_count(self) -> int:
        return sum(len(events) for events in self._waiters.values())

    def woken_since(self, key: str, generation: int) -> bool:
        """Whether `key` may have been notified after `generation` (or every waiter woken): False only when
        it surely was not, so a read begun at `generation` still holds what the database holds for it."""
        return self._last_wake.get(key, self._forgotten) > generation

    def _wake(self, key: str | None = None) -> None:
        self.generation += 1
        if key is None:
            self._last_wake.clear()
            self._forgotten = self.generation
        else:
            self._last_wake[key] = self.generation
            self._last_wake.move_to_end(key)
            if len(self._last_wake) > REMEMBERED_PAYLOADS:
                self._forgotten = max(self._forgotten, self._last_wake.popitem(last=False)[1])
        groups = self._waiters.values() if key is None else [self._waiters.get(key, ())]
        for events in groups:
            for event in events:
                event.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._listen_forever(), name=f"LISTEN {self.channel}")

    def drain(self) -> None:
        """Shutdown: wake every waiter now and every later one at once, so each answers instead of being cut."""
        self.draining.set()
        self._wake()

    async def stop(self) -> None:
        self.drain()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _listen_forever(self) -> None:
        retry = FIRST_RETRY_SECONDS
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(**self._params, autocommit=True) as conn:
                    await conn.execute(f'LISTEN "{self.channel}"')
                    self.listening.set()
                    retry = FIRST_RETRY_SECONDS
                    # Anything committed while no connection listened is read now.
                    self._wake()
                    async for payload in _notifications(conn):
                        self._wake(payload)
            except psycopg.Error as exc:
                logger.warning("LISTEN %s lost (%s); again in %.1fs", self.channel, exc, retry)
            self.listening.clear()
            await asyncio.sleep(retry)
            retry = min(retry * 2, LAST_RETRY_SECONDS)


async def _notifications(conn: psycopg.AsyncConnection) -> AsyncIterator[str]:
    """The payload of each notification the connection receives, as it arrives.

    psycopg's own `notifies()` wakes every 0.1 s while nothing arrives (to notice
    an interrupt in a synchronous program): about 2 ms of CPU a second for each
    listener of a quiet stack. This waits on the socket alone, with libpq's
    calls that psycopg exposes (`pgconn`). A connection the server closes
    becomes readable, and consuming it raises `psycopg.OperationalError`.
    """
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    encoding = conn.info.encoding
    socket = conn.pgconn.socket
    loop.add_reader(socket, readable.set)
    try:
        while True:
            await readable.wait()
            readable.clear()
            conn.pgconn.consume_input()
            while (notify := conn.pgconn.notifies()) is not None:
                yield notify.extra.decode(encoding)
    finally:
        loop.remove_reader(socket)
