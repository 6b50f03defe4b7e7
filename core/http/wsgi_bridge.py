"""Call the project's WSGI application from asyncio, for one short request at a time.

The live listener (conversations/live) holds many requests open without a
thread each, but what it answers is exactly what the ordinary route answers:
it asks the same Django application, through the same middleware, views and
selectors, in a small thread pool. A thread is busy only for the read itself,
never while a request waits.
"""

from __future__ import annotations

import asyncio
import io
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from django.db import connections

# Reads are short (one statement each); a few threads keep PostgreSQL busy
# without one connection per waiter.
READ_THREADS = 4


@dataclass(frozen=True)
class WsgiAnswer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


def environ_for(scope: dict, *, path: str | None = None, query_string: bytes | None = None) -> dict[str, Any]:
    """A WSGI environ for an ASGI HTTP scope without a body (optionally another path or query)."""
    server = scope.get("server") or ("localhost", 80)
    query = query_string if query_string is not None else scope.get("query_string", b"")
    client = scope.get("client") or ("", 0)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": scope.get("root_path", ""),
        "PATH_INFO": path if path is not None else scope["path"],
        "QUERY_STRING": query.decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]),
        "REMOTE_ADDR": str(client[0]),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "CONTENT_LENGTH": "0",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        if name in ("CONTENT_LENGTH", "CONTENT_TYPE"):
            continue  # no body is passed on
        key = f"HTTP_{name}"
        value = raw_value.decode("latin-1")
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


class WsgiBridge:
    """`await bridge.call(environ)`: the WSGI app's answer, computed in the pool."""

    def __init__(self, application: Callable, threads: int = READ_THREADS):
        self._application = application
        self._started = 0  # threads the pool has started (it starts them as work comes)
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wsgi-bridge", initializer=self._count)

    def _count(self) -> None:
        with self._lock:
            self._started += 1

    def _call(self, environ: dict[str, Any]) -> WsgiAnswer:
        started: list = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info=None):
            started[:] = [int(status.split(" ", 1)[0]), headers]
            return lambda data: None  # the legacy write() callable: Django never uses it

        chunks: Iterable[bytes] = self._application(environ, start_response)
        try:
            body = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # Django's request_finished signal: old connections are closed there
        status, headers = started
        return WsgiAnswer(status, [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers], body)

    async def call(self, environ: dict[str, Any]) -> WsgiAnswer:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._call, environ)

    def shutdown(self) -> None:
        """Close each thread's database connections (Django's are per thread: only it may close them), then stop."""
        with self._lock:
            started = self._started
        if started:
            # Every thread waits at the barrier, so each of them runs exactly one close.
            barrier = threading.Barrier(started)

            def close_in_this_thread() -> None:
                barrier.wait(timeout=10)
                connections.close_all()

            for _ in range(started):
                self._pool.submit(close_in_this_thread)
        self._pool.shutdown(wait=True, cancel_futures=False)
