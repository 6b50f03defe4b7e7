"""A deadline, enforced from this side, for requests waiting on PostgreSQL.

PG_CONNECT_TIMEOUT bounds opening a connection and PG_STATEMENT_TIMEOUT has the
server cancel a slow statement, but neither helps when the server stops
answering on a connection that is already open (a hung server, or a network
path that swallows packets while something on the way still acknowledges
them): psycopg would wait on the socket until gunicorn kills the worker, and
the client would get no answer at all.

`DatabaseDeadlineMiddleware` gives each request a deadline of
PG_STATEMENT_TIMEOUT + PG_CONNECT_TIMEOUT + 1 s. One watchdog thread per
process looks at the requests in flight twice a second and shuts down the
database socket of any request past its deadline, so its blocked call fails at
once with an OperationalError, which the API answers as its usual 503. The
request path pays a dict insert and delete; Django then closes the severed
connection, and the next request opens a fresh one.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from django.conf import settings
from django.db import connections

logger = logging.getLogger(__name__)

CHECK_INTERVAL = 0.5  # seconds between the watchdog's looks


class _Watchdog:
    def __init__(self):
        self._lock = threading.Lock()
        self._watched: dict[int, tuple[float, object, str]] = {}  # thread id -> (deadline, wrapper, what)
        self._pid = None

    def watch(self, wrapper, limit: float, what: str) -> int:
        if self._pid != os.getpid():  # first request of this (forked) process: threads do not survive fork
            self._start()
        token = threading.get_ident()
        with self._lock:
            self._watched[token] = (time.monotonic() + limit, wrapper, what)
        return token

    def unwatch(self, token: int) -> None:
        with self._lock:
            self._watched.pop(token, None)

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._watched.clear()
        threading.Thread(target=self._run, name="db-deadline-watchdog", daemon=True).start()

    def _run(self) -> None:
        while True:
            time.sleep(CHECK_INTERVAL)
            now = time.monotonic()
            with self._lock:  # held while severing, so a finishing request cannot hand the connection on
                for token, (deadline, wrapper, what) in list(self._watched.items()):
                    if now >= deadline:
                        del self._watched[token]
                        if _sever(wrapper):
                            logger.warning("cut the database connection of %s: no answer within its deadline", what)


def _sever(wrapper) -> bool:
    """Shut down the socket under a Django connection; True when there was one to shut."""
    raw = getattr(wrapper, "connection", None)
    try:
        fd = raw.pgconn.socket if raw is not None else -1
    except Exception:  # already closed
        return False
    if fd < 0:
        return False
    try:
        # A duplicate of the descriptor: shutdown acts on the shared socket, and
        # closing the duplicate leaves psycopg's own descriptor to psycopg.
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        return False
    return True


_watchdog = _Watchdog()


class DatabaseDeadlineMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        limit = settings.DATABASE_REQUEST_DEADLINE
        if not limit:
            return self.get_response(request)
        token = _watchdog.watch(connections["default"], limit, f"{request.method} {request.path}")
        try:
            return self.get_response(request)
        finally:
            _watchdog.unwatch(token)
