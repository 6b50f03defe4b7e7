"""Whether the database answers, as `/health` reports it: asked at most once a second per process.

A load balancer or Consul polls `/health` every few seconds, and each answer
only has to be true when it is given: a check that succeeded less than
`MAX_AGE` seconds ago is as true as one made now. So a success is remembered
for `MAX_AGE` (timed from when the check started, so the answer is never
older than that), and every call within it is answered without a statement.
A failure is never remembered: while the database does not answer, every
call asks it again, and the first call after a success has aged out sees a
database that stopped answering. Each process keeps its own memory; two
threads that find it expired at once may both ask, which is harmless.
"""

from __future__ import annotations

import time

from django.db import connection

MAX_AGE = 1.0  # seconds a successful check stays true

_last_success: float | None = None  # time.monotonic() when the last successful check started


def database_answers() -> bool:
    """True when the database answered `SELECT 1` (now, or in a check started less than MAX_AGE ago)."""
    global _last_success
    started = time.monotonic()
    last = _last_success
    if last is not None and started - last < MAX_AGE:
        return True
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:  # any failure to reach the database means "not healthy"
        _last_success = None
        return False
    _last_success = started
    return True


def forget() -> None:
    """Ask the database at the next call (tests; a process that must not trust an earlier answer)."""
    global _last_success
    _last_success = None
