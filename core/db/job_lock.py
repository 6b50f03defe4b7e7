"""One database-wide lock for the schema jobs, so two migrators never run them at once.

`migrate` and `seed` hold a PostgreSQL session-level advisory lock while they work.
It lives on a connection of its own, opened only for it, so it outlasts anything the
job's own connection does (transactions, reconnects) and disappears with the process
if the process dies: a crashed migrator never leaves the lock behind. Advisory locks
are scoped to one database, so migrators of different databases never wait on each
other. A second job waits, saying every few seconds who holds the lock, and gives up
with a clear message after `--lock-timeout` seconds.

SQLite needs no such lock: its writers already take the whole database file in turn.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
from django.core.management.base import CommandError
from django.db import connections

LOCK_NAME = "messenger:schema-jobs"
DEFAULT_TIMEOUT = 600.0
POLL_INTERVAL = 0.2
REPORT_EVERY = 5.0


def lock_key(name: str = LOCK_NAME) -> int:
    """The advisory lock's 64-bit key: stable across processes and versions."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


def add_lock_arguments(parser) -> None:
    """The flag every locked job offers."""
    parser.add_argument(
        "--lock-timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"How long to wait for another migrator's job to finish before giving up (default {DEFAULT_TIMEOUT:g}; "
        "0 gives up at once).",
    )


def _describe_holder(conn, key: int) -> str:
    row = conn.execute(
        "SELECT a.pid, a.application_name, a.backend_start "
        "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND l.classid = %s AND l.objid = %s AND l.objsubid = 1",
        [(key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF],
    ).fetchone()
    if row is None:
        return "another session"
    pid, application_name, started = row
    return f"server pid {pid} ({application_name or 'unnamed'}, connected {started:%Y-%m-%d %H:%M:%S %Z})"


def _try_lock(conn: psycopg.Connection, key: int) -> bool:
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()
    return bool(row and row[0])


@contextmanager
def job_lock(
    job: str, *, timeout: float = DEFAULT_TIMEOUT, using: str = "default", progress: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold the schema-jobs lock of database `using` for the duration of the block."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        yield
        return
    progress = progress or (lambda message: None)
    params = connection.get_connection_params()
    name = params.get("dbname")
    # The application name is what a waiting migrator shows, to say who it waits for.
    params["application_name"] = f"messenger {job} on {socket.gethostname()} pid {os.getpid()}"[:63]
    try:
        conn = psycopg.connect(**params)
    except psycopg.Error as exc:
        raise CommandError(
            f"Cannot connect to PostgreSQL database {name!r} at {params.get('host')}:{params.get('port')} "
            f"as {params.get('user')!r}: {str(exc).strip()}"
        ) from exc
    key = lock_key()
    try:
        conn.autocommit = True
        started = time.monotonic()
        next_report = started
        while not _try_lock(conn, key):
            waited = time.monotonic() - started
            holder = _describe_holder(conn, key)
            if waited >= timeout:
                raise CommandError(
                    f"Gave up after {waited:.0f}s: another migrator job holds the schema-jobs lock of database "
                    f"{name!r} ({holder}). Let it finish, or stop it, and run {job} again."
                )
            if time.monotonic() >= next_report:
                progress(
                    f"Waiting for the schema-jobs lock of database {name!r}, held by {holder} "
                    f"({waited:.0f}s of {timeout:g}s) ..."
                )
                next_report += REPORT_EVERY
            time.sleep(POLL_INTERVAL)
        yield
    finally:
        # Closing the session releases the lock, also after an error in the job.
        conn.close()
