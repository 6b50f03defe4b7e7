"""A few asyncio PostgreSQL connections for one process's reads, with the request deadline of core.db.deadline.

The live listener (conversations/live) answers the hot reads on its event
loop: a statement runs on one of these connections while the loop serves
everything else, so a read costs no thread hand-off. A connection serves one
statement at a time; `SIZE` of them keep PostgreSQL busy for one process.

Connections are opened with the parameters Django's backend computes (so the
statement timeout, connect timeout, keepalives and target session attributes
are the same), prepare every statement on first use unless
PG_PREPARED_STATEMENTS is off, and are checked before reuse the way
core.db.postgresql checks Django's: a quiet socket that turned readable was
closed by the server, so it is replaced instead of failing the read. A read
that still fails on a kept connection (closed between the check and the
statement) is tried once more on a new one: a read changes nothing, so a
second try is always safe. A read has the deadline the WSGI side's middleware
gives a request (DATABASE_REQUEST_DEADLINE: PG_STATEMENT_TIMEOUT +
PG_CONNECT_TIMEOUT + 1 s), over everything it waits for (a free connection
too); past it the read fails at once as a lost database does (a 503), rather
than queue behind a database that does not answer, and its connection is
dropped once psycopg has ended the statement.
"""

from __future__ import annotations

import asyncio
import select
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

SIZE = 4


def django_connect_params(*, prepare: bool) -> dict[str, Any]:
    """The default database's libpq parameters as Django's backend computes them, without Django's own extras;
    with `prepare`, psycopg prepares each statement on first use (as Django's connection does)."""
    from django.db import connection

    params = connection.get_connection_params()
    for django_only in ("cursor_factory", "context"):
        params.pop(django_only, None)
    if not prepare:
        params.pop("prepare_threshold", None)
    return params


class DeadlinePassed(psycopg.OperationalError):
    """The database did not answer within the request's deadline."""


def _quiet(conn: psycopg.AsyncConnection) -> bool:
    """Open, idle and with nothing to read: safe to send a statement on without asking the server first."""
    if conn.closed or conn.info.transaction_status != TransactionStatus.IDLE:
        return False
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN | select.POLLPRI)
    return not poller.poll(0)


class AsyncReadPool:
    def __init__(
        self, connect_params: Callable[[], dict[str, Any]], deadline: Callable[[], float | None], size: int = SIZE
    ):
        self._params = connect_params
        self._deadline = deadline
        self._idle: list[psycopg.AsyncConnection] = []
        self._slots = asyncio.Semaphore(size)
        # Reads past their deadline, still ending (held here: asyncio keeps tasks weakly).
        self._abandoned: set[asyncio.Task] = set()

    async def fetchone(self, sql: str, params: dict[str, Any], *, prepare: bool | None = None) -> tuple:
        """The first row of `sql`; psycopg's errors as they come (OperationalError: the database is unreachable).

        The deadline bounds the whole read: waiting for a free connection, opening one, the statement. A read
        past it is cancelled and left to end on its own: psycopg answers a cancelled statement by asking the
        server to cancel it and waiting for that, up to 5 s each, which on a silent link (a cut between hosts)
        would hold the caller up to 10 s past its deadline. The abandoned read keeps its slot until it has ended.
        """
        read = asyncio.ensure_future(self._fetch_in_a_slot(sql, params, prepare))
        try:
            done, _ = await asyncio.wait({read}, timeout=self._deadline())
        except asyncio.CancelledError:  # the caller's own request ended (gunicorn cancels a gone client's)
            self._abandon(read)
            raise
        if read in done:
            return read.result()
        self._abandon(read)
        raise DeadlinePassed("the database did not answer within the request's deadline")

    def _abandon(self, read: asyncio.Task) -> None:
        """Cancel a read nobody waits for any more, and hold it until it has ended."""
        read.cancel()
        self._abandoned.add(read)
        read.add_done_callback(self._forget)

    def _forget(self, read: asyncio.Task) -> None:
        self._abandoned.discard(read)
        if not read.cancelled():
            read.exception()  # retrieved: its caller has had its answer already

    async def _fetch_in_a_slot(self, sql: str, params: dict[str, Any], prepare: bool | None) -> tuple:
        async with self._slots:
            return await self._fetch(sql, params, prepare)

    async def _fetch(self, sql: str, params: dict[str, Any], prepare: bool | None) -> tuple:
        conn, kept = await self._take()
        try:
            row = await _execute(conn, sql, params, prepare)
        except psycopg.OperationalError:
            await _close(conn)
            if not kept:
                raise
            conn = await self._open()  # closed between the check and the statement: once more, on a new one
            try:
                row = await _execute(conn, sql, params, prepare)
            except BaseException:  # a cancelled statement leaves the connection in no known state
                await _close(conn)
                raise
        except BaseException:
            await _close(conn)
            raise
        self._idle.append(conn)
        return row

    async def close(self) -> None:
        while self._idle:
            await _close(self._idle.pop())

    async def _take(self) -> tuple[psycopg.AsyncConnection, bool]:
        """A kept connection that looks alive (and whether it was kept), else a new one."""
        while self._idle:
            conn = self._idle.pop()
            if _quiet(conn):
                return conn, True
            await _close(conn)
        return await self._open(), False

    async def _open(self) -> psycopg.AsyncConnection:
        return await psycopg.AsyncConnection.connect(**self._params(), autocommit=True)


async def _execute(conn: psycopg.AsyncConnection, sql: str, params: dict[str, Any], prepare: bool | None) -> tuple:
    cursor = await conn.execute(sql, params, prepare=prepare)
    row = await cursor.fetchone()
    if row is None:
        raise psycopg.ProgrammingError("the statement returned no row")
    return row


async def _close(conn: psycopg.AsyncConnection) -> None:
    try:
        await conn.close()
    except psycopg.Error:
        pass
