"""The live listener's server frees each connection once it has closed.

gunicorn's asyncio worker (the live listener, messenger/gunicorn_live_conf.py)
keeps a protocol object per connection, which holds its HTTP parser, which
holds the protocol's own callbacks: a reference cycle. gunicorn-h1c before
0.6.10 built a parser the garbage collector could not see into, so that cycle
was never collected: every connection the listener ever served stayed in its
memory (about 20 KiB each for a long-poll; measured, the listener grew by 20
MiB for each thousand waiters a bench round held and let go). Here gunicorn's
own protocol class serves real connections on loopback with the parser the
listener uses, and none is left once they have closed.
"""

from __future__ import annotations

import asyncio
import gc
import os
import weakref

from gunicorn.asgi.protocol import ASGIProtocol
from gunicorn.config import Config
from gunicorn.glogging import Logger
from gunicorn.workers.gasgi import ASGIWorker

CONNECTIONS = 50


async def _ok(scope, receive, send) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"OK"})


def _worker() -> ASGIWorker:
    """gunicorn's own asyncio worker with its default settings, not started: the protocol reads its settings and app."""
    config = Config()
    worker = ASGIWorker(0, os.getppid(), [], None, 30, config, Logger(config))
    worker.asgi = _ok
    return worker


async def _one_request(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    return answer


async def _serve_and_close(protocols: list[weakref.ref]) -> list[bytes]:
    loop = asyncio.get_running_loop()
    worker = _worker()
    worker.loop = loop

    def protocol() -> ASGIProtocol:
        made = ASGIProtocol(worker)
        protocols.append(weakref.ref(made))
        return made

    server = await loop.create_server(protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        answers = [await _one_request(port) for _ in range(CONNECTIONS)]
        # Each connection's task ends once the server has seen the close.
        async with asyncio.timeout(10):
            await _connections_ended(worker)
    finally:
        server.close()
        await server.wait_closed()
    return answers


async def _connections_ended(worker: ASGIWorker) -> None:
    """Until every connection has been seen closed and its task has ended (the test's own task aside)."""
    current = asyncio.current_task()
    while worker.nr_conns or any(task is not current for task in asyncio.all_tasks()):
        await asyncio.sleep(0.01)


def test_the_c_parser_is_the_one_gunicorn_picks():
    worker = _worker()
    protocol = ASGIProtocol(worker)
    protocol._setup_callback_parser()
    assert type(protocol._callback_parser).__module__.startswith("gunicorn_h1c")


def test_no_connection_is_kept_after_it_closed():
    protocols: list[weakref.ref] = []
    answers = asyncio.run(_serve_and_close(protocols))

    assert len(answers) == CONNECTIONS and all(answer.startswith(b"HTTP/1.1 200") for answer in answers)
    assert len(protocols) == CONNECTIONS
    gc.collect()
    kept = [ref for ref in protocols if ref() is not None]
    assert kept == [], f"{len(kept)} of {CONNECTIONS} closed connections' protocols are still in memory"
