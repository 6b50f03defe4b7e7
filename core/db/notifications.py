"""PostgreSQL notifications fanned out to asyncio waiters: one LISTEN connection per process.

A process that holds many waiters (conversations/live) keeps one async psycopg
connection that LISTENs on one channel, and wakes the waiters subscribed to a
notification's payload. A waiter holds a `Wake` (an `asyncio.Event` for one
waiter), never a thread or a connection of its own, so ten thousand idle
waiters cost ten thousand small objects.

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
from collections.abc import AsyncIterator
from typing import Any

import psycopg

logger = logging.getLogger(__name__)

# Waits between connection attempts while PostgreSQL is unreachable: doubled up to the cap.
FIRST_RETRY_SECONDS = 0.2
LAST_RETRY_SECONDS = 5.0
# How many payloads' last wake-ups a hub remembers for `woken_since` (a few MB at most); past that it forgets the
# longest quiet ones, and answers "maybe" for them.
REMEMBERED_PAYLOADS = 100_000


class Wake:
    """`asyncio.Event`'s `set`, `clear`, `is_set` and `wait`, for one waiter at a time.

    An idle waiter holds one of these for as long as it waits: an Event costs
    about 860 bytes (its deque of waiters), this about 60, plus a future while
    it is awaited. One waiter, because that future is shared: a second one
    awaiting it would be cancelled along with the first.
    """

    __slots__ = ("_set", "_future")

    def __init__(self) -> None:
        self._set = False
        self._future: asyncio.Future[None] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if not self._set:
            self._set = True
            if self._future is not None and not self._future.done():
                self._future.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        if self._future is not None and not self._future.done():
            raise RuntimeError("a Wake has one waiter at a time")
        # A future cancelled with its waiter (a timeout) is done, and replaced here.
        self._future = asyncio.get_running_loop().create_future()
        await self._future
        return True


class Subscription:
    """`with hub.subscription(key) as woken:` the `Wake` set whenever `key` is notified, while the block runs."""

    __slots__ = ("_hub", "_key", "wake")

    def __init__(self, hub: Hub, key: str) -> None:
        self._hub, self._key, self.wake = hub, key, Wake()

    def __enter__(self) -> Wake:
        if self._hub.draining.is_set():
            self.wake.set()
        self._hub._waiters[self._key].add(self.wake)
        return self.wake

    def __exit__(self, *exc_info: object) -> None:
        waiters = self._hub._waiters.get(self._key)
        if waiters is not None:
            waiters.discard(self.wake)
            if not waiters:
                del self._hub._waiters[self._key]


class Hub:
    """One LISTEN connection and the waiters of each payload (a conversation id, as text)."""

    def __init__(self, channel: str, connect_params: dict[str, Any]):
        self.channel = channel
        self._params = connect_params
        self._waiters: defaultdict[str, set[Wake]] = defaultdict(set)
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

    def subscription(self, key: str) -> Subscription:
        """A `Wake` set whenever `key` is notified (or on reconnect or drain); subscribe before reading."""
        return Subscription(self, key)

    def waiter_count(self) -> int:
        return sum(len(wakes) for wakes in self._waiters.values())

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
        for wakes in groups:
            for wake in wakes:
                wake.set()

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
