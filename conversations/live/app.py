"""The live listener's ASGI application.

- `GET /conversations/{id}/messages?wait=S`: the page as the ordinary route
  answers it; when it is empty (and the read was allowed), held until a message
  is stored in the conversation, `S` seconds pass or the instance drains, then
  read again. A refusal is answered before any wait.
- `GET /conversations/{id}/stream`: Server-Sent Events, one event per message
  with `id:` its index, from `Last-Event-ID` (header) or `after_index` onwards;
  a comment line every LIVE_HEARTBEAT keeps an idle stream open.
- A plain JSON GET of a message page or of the conversation list (NGINX
  sends every GET of those here) is answered on this loop
  (conversations.live.reads), as are the long-poll's and the stream's reads;
  so is `/health` (NGINX sends a client's here, and the listener's own
  start-up check asks it; Consul's check asks the ordinary port's).
- Any other GET or HEAD is passed to the ordinary application as it is.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode

from django.conf import settings

from conversations import validation
from conversations.live.reads import NativeReads
from core.db.async_pool import django_connect_params
from core.db.notifications import Hub, Wake
from core.http import observability, plain_json
from core.http.errors import InvalidInput
from core.http.wsgi_bridge import WsgiAnswer, WsgiBridge, environ_for

# The channel the messages table's trigger notifies (conversations migration 0005).
CHANNEL = "messenger_messages"
# A stream reads again this often even without a notification: the backstop
# for a wake-up lost some way the reconnect does not cover. Longer than the
# longest wait (a long-poll's backstop is the client's next poll): a read costs
# a page through Django, and 10,000 idle streams reading every 10 s were a
# thousand reads a second of nothing.
RECHECK_SECONDS = 60.0
# What a stream asks for per read; the page route's own maximum.
STREAM_PAGE = validation.MAX_PAGE
_ROUTE = re.compile(r"^/conversations/([^/]+)/(messages|stream)$")
# How many long-polls' last answers the listener remembers (see `_known_empty`): 100 bytes or so each.
REMEMBERED_ANSWERS = 100_000

Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


class LiveApp:
    def __init__(self, wsgi_application: Callable) -> None:
        # The ordinary application (messenger/asgi_live.py hands it in): every
        # page a waiter answers is that application's own answer.
        self.bridge = WsgiBridge(wsgi_application)
        # The hot reads, answered on this loop; anything they do not cover goes through the bridge.
        self.native = NativeReads()
        self.hub: Hub | None = None
        # Page reads under way, by the request they answer: (the hub's
        # generation when the read began, its answer).
        self._reads: dict[tuple, tuple[int, asyncio.Future[WsgiAnswer]]] = {}
        # The last index each long-poll was answered up to, with the hub's
        # generation when that read began, by the request's digest without its
        # after_index: a client that asks again right after it (the next
        # long-poll of a loop) needs no read until its conversation is
        # notified (`_known_empty`).
        self._answered: OrderedDict[bytes, tuple[int, int]] = OrderedDict()

    async def _read(
        self, hub: Hub, scope: dict, since: int, environ: dict[str, Any] | None = None
    ) -> tuple[WsgiAnswer, bool, int]:
        """The page this request asks for, as the ordinary route answers it now; one read for all alike.

        Waiters asking the same page (the same path, query and headers: a
        thousand clients of one conversation) share one read, when it
        began at or after the caller's `since` (the hub's generation when it
        subscribed or was woken): such a read sees every commit whose wake-up
        the caller has had, and a commit it misses wakes the caller later, as
        it is still subscribed. Returns the answer, whether it was another
        request's (then its X-Request-Id is that request's: `_own_id` is this
        one's) and the hub's generation when the read began.
        """
        environ = environ or environ_for(scope)
        key = _same_answer(environ)
        under_way = self._reads.get(key)
        if under_way is None or under_way[0] < since:
            began = hub.generation
            read = asyncio.ensure_future(self.ordinary_answer(environ))
            self._reads[key] = (began, read)

            def finished(done: asyncio.Future) -> None:
                if self._reads.get(key, (0, None))[1] is done:
                    del self._reads[key]

            read.add_done_callback(finished)
            return await asyncio.shield(read), False, began
        began, pending = under_way
        return await asyncio.shield(pending), True, began

    async def ordinary_answer(self, environ: dict[str, Any]) -> WsgiAnswer:
        """The ordinary route's answer: read on this loop when it is a plain JSON read, else Django's."""
        return await self.native.answer(environ) or await self.bridge.call(environ)

    # -- ASGI
    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def start(self) -> Hub:
        if self.hub is None:
            self.hub = Hub(CHANNEL, django_connect_params(prepare=False))
            self.hub.start()
        return self.hub

    def drain(self) -> None:
        """SIGTERM: every waiter answers what it has now, every stream ends (clients resume from its last id)."""
        if self.hub is not None:
            self.hub.drain()

    async def stop(self) -> None:
        if self.hub is not None:
            await self.hub.stop()
        await self.native.close()
        self.bridge.shutdown()

    async def _http(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            text = f"Method {scope['method']} not allowed on the live listener"
            await _answer(send, _refusal(scope, 405, text, (b"allow", b"GET, HEAD")))
            return
        route = _ROUTE.match(scope["path"])
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
        try:
            if route and route.group(2) == "stream":
                await self._stream(scope, receive, send, route.group(1), _resume_from(scope, query))
            elif route and "wait" in query:
                await self._wait(scope, receive, send, route.group(1), _wait_seconds(query))
            else:
                await _answer(send, await self.ordinary_answer(environ_for(scope)))
        except InvalidInput as refusal:
            await _answer(send, _refusal(scope, 400, refusal.message))

    # -- the long-poll
    async def _wait(self, scope: dict, receive: Receive, send: Send, raw_id: str, seconds: int) -> None:
        """The long-poll. A client that goes away meanwhile is not watched for here: gunicorn cancels its
        request's task `asgi_disconnect_grace_period` (3 s) after the connection is lost, which ends the
        wait and its subscription. (A task per waiter awaiting `http.disconnect` cost an idle waiter about
        4 KB with gunicorn's side of it: 39 MiB of 10,000 waiters' 307; the stream, which may run for hours,
        keeps one.)"""
        hub = self.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        conversation = _key(raw_id)
        digest, after = _apart_from_after_index(environ_for(scope))
        answer: WsgiAnswer | None = None
        shared = False

        async def read() -> WsgiAnswer:
            nonlocal shared
            answer, shared, began = await self._read(hub, scope, hub.generation)
            if not shared:  # a shared read's own request remembers it: the same digest, one JSON parse
                self._remember(digest, after, answer, began)
            return answer

        # Subscribed before the first read: a message committed between the
        # read and the wait still wakes it.
        with hub.subscription(conversation) as woken:
            if not self._known_empty(hub, conversation, digest, after):
                answer = await read()
            while (answer is None or _empty_page(answer)) and not hub.draining.is_set():
                left = deadline - loop.time()
                if left <= 0:
                    break
                await _woken(woken, timeout=min(left, RECHECK_SECONDS))
                woken.clear()
                answer = await read()
            if answer is None:  # the wait ended before anything was read: what it answers is read now
                answer = await read()
        await _answer(send, answer, _own_id(scope) if shared else None)

    def _known_empty(self, hub: Hub, conversation: str, digest: bytes, after: str | None) -> bool:
        """Whether this long-poll asks for the page right after one this listener answered the same request
        (but its after_index and wait) and nothing was notified in the conversation since that read began: its page is
        then empty and allowed, and the read before the wait can be skipped. What it answers is still read when
        the wait ends. Only while the LISTEN connection is up (a reconnect wakes every waiter and forgets)."""
        answered = self._answered.get(digest)
        if answered is None or not hub.listening.is_set():
            return False
        last, began = answered
        return after == str(last) and not hub.woken_since(conversation, began)

    def _remember(self, digest: bytes, after: str | None, answer: WsgiAnswer, began: int) -> None:
        """The last index an allowed, whole answer (no `next`) holds: the after_index of the client's next long-poll."""
        if answer.status != 200:
            self._answered.pop(digest, None)
            return
        if _empty_page(answer):
            if after is None or not after.isdecimal() or after != str(int(after)):
                return
            last = int(after)
        else:
            page = json.loads(answer.body)
            if "next" in page:
                return
            last = page["messages"][-1]["index"]
        self._answered[digest] = (last, began)
        self._answered.move_to_end(digest)
        if len(self._answered) > REMEMBERED_ANSWERS:
            self._answered.popitem(last=False)

    # -- the stream
    async def _stream(self, scope: dict, receive: Receive, send: Send, raw_id: str, after: int) -> None:
        hub = self.start()
        loop = asyncio.get_running_loop()
        path = f"/conversations/{raw_id}/messages"

        def read(cursor: int) -> Awaitable[tuple[WsgiAnswer, bool, int]]:
            query = urlencode({"after_index": cursor, "limit": STREAM_PAGE}).encode()
            environ = environ_for(scope, path=path, query_string=query)
            # The page is read as JSON whatever the stream's client accepts (a browser's EventSource
            # sends `Accept: text/event-stream`, which the page route itself would refuse with a 406).
            environ["HTTP_ACCEPT"] = "application/json"
            return self._read(hub, scope, since, environ)

        with hub.subscription(_key(raw_id)) as woken:
            since = hub.generation
            answer, shared, _ = await read(after)
            request_id = _own_id(scope) if shared else dict(answer.headers).get(_REQUEST_ID)
            if answer.status != 200:
                await _answer(send, answer, request_id)
                return
            disconnected = loop.create_task(_disconnect(receive))
            disconnected.add_done_callback(lambda _: woken.set())  # a client gone wakes it too
            headers = [
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no"),  # NGINX: pass each event on at once
                *([(_REQUEST_ID, request_id)] if request_id else []),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            # How long a browser waits before it reconnects with Last-Event-ID.
            await send({"type": "http.response.body", "body": b"retry: 1000\n\n", "more_body": True})
            heartbeat = settings.LIVE_HEARTBEAT
            cursor, read_at = after, loop.time()
            while not disconnected.done():
                if answer.status != 200:
                    break  # e.g. the database is unavailable: the client resumes from its last id
                page = json.loads(answer.body)
                if page["messages"]:
                    events = b"".join(_event(message) for message in page["messages"])
                    await send({"type": "http.response.body", "body": events, "more_body": True})
                    cursor = page["messages"][-1]["index"]
                if "next" in page:
                    answer, _, _ = await read(cursor)
                    continue
                if hub.draining.is_set():
                    break
                while not await _woken(woken, timeout=heartbeat):
                    await send({"type": "http.response.body", "body": b": heartbeat\n\n", "more_body": True})
                    if loop.time() - read_at >= RECHECK_SECONDS:
                        break
                if disconnected.done():
                    break
                woken.clear()
                since = hub.generation
                (answer, _, _), read_at = await read(cursor), loop.time()
            disconnected.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


_REQUEST_ID = observability.REQUEST_ID_HEADER.lower().encode()
# What tells one request from another without changing the page it gets.
_PER_REQUEST = {"HTTP_X_REQUEST_ID", "HTTP_X_FORWARDED_FOR", "HTTP_X_REAL_IP", "HTTP_CONNECTION", "REMOTE_ADDR"}


def _same_answer(environ: dict[str, Any]) -> tuple:
    """Requests with equal keys get the same page: the path, the query string (`wait` too: a bad one
    is refused), every header but those that only tell one request from another."""
    return tuple(sorted((k, v) for k, v in environ.items() if isinstance(v, str) and k not in _PER_REQUEST))


def _apart_from_after_index(environ: dict[str, Any]) -> tuple[bytes, str | None]:
    """A digest of the request as `_same_answer` keys it but for its after_index and wait, and that
    after_index ("0" when absent, as the route reads it; None when given twice). A client's loop may shorten
    its waits; a bad wait waits not at all (`_wait_seconds`), so the read at its end refuses it."""
    pairs = parse_qsl(environ["QUERY_STRING"], keep_blank_values=True)
    given = [value for name, value in pairs if name == "after_index"]
    rest = {
        **environ,
        "QUERY_STRING": urlencode([(name, value) for name, value in pairs if name not in ("after_index", "wait")]),
    }
    digest = hashlib.blake2b(repr(_same_answer(rest)).encode(), digest_size=16).digest()
    return digest, ("0" if not given else given[0] if len(given) == 1 else None)


def _key(raw_id: str) -> str:
    """The conversation id as the trigger writes it ("7"), for a path id the page accepts ("07")."""
    return raw_id.lstrip("0") if raw_id.isascii() and raw_id.isdecimal() else raw_id


def _wait_seconds(query: dict[str, str]) -> int:
    """The wait asked for; a bad one waits not at all, as the page read itself refuses it (in the route's order)."""
    try:
        return validation.wait_seconds(query)
    except InvalidInput:
        return 0


def _resume_from(scope: dict, query: dict[str, str]) -> int:
    """Where a stream starts: after the Last-Event-ID a reconnecting client sends, else after `after_index`."""
    for name, value in scope.get("headers", []):
        if name.lower() == b"last-event-id":
            header = {"Last-Event-ID": value.decode("latin-1").strip()}
            return validation.query_int(header, "Last-Event-ID", default=0, minimum=0, maximum=validation.MAX_ID)
    return validation.query_int(query, "after_index", default=0, minimum=0, maximum=validation.MAX_ID)


def _empty_page(answer: WsgiAnswer) -> bool:
    """An allowed read with nothing after the cursor: the only answer worth waiting on (the page's
    JSON is compact and starts with its messages, so the bytes tell without parsing them)."""
    return answer.status == 200 and answer.body.startswith(b'{"messages":[]')


def _event(message: dict) -> bytes:
    data = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
    return f"id: {message['index']}\ndata: {data}\n\n".encode()


async def _disconnect(receive: Receive) -> None:
    """Returns when the client has gone away."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _woken(woken: Wake, timeout: float) -> bool:
    """Until woken (a notification, the drain, the client gone) or `timeout` seconds: True unless it
    timed out. No task of its own: ten thousand idle waiters each hold only their Wake's future."""
    try:
        async with asyncio.timeout(timeout):
            await woken.wait()
    except TimeoutError:
        return False
    return True


def _refusal(scope: dict, status: int, text: str, *headers: tuple[bytes, bytes]) -> WsgiAnswer:
    """A refusal this listener writes itself, in the contract's shape, with its request id as the app's have."""
    request_id = observability.request_id(environ_for(scope)).encode()
    headers = (
        (b"content-type", b"application/json"),
        (observability.REQUEST_ID_HEADER.lower().encode(), request_id),
        *headers,
    )
    return WsgiAnswer(status, list(headers), plain_json.render({"error": text}))


def _own_id(scope: dict) -> bytes:
    """This request's X-Request-Id, for an answer read for another request: the one it sent, or a new one."""
    offered = next((v for k, v in scope.get("headers", []) if k.lower() == _REQUEST_ID), b"")
    return observability.request_id({"HTTP_X_REQUEST_ID": offered.decode("latin-1")}).encode()


async def _answer(send: Send, answer: WsgiAnswer, request_id: bytes | None = None) -> None:
    """One whole HTTP answer, with the Content-Length of its body (and `request_id`, if given, as its id)."""
    headers = [
        (name, request_id if name == _REQUEST_ID and request_id else value)
        for name, value in answer.headers
        if name != b"content-length"
    ]
    headers.append((b"content-length", str(len(answer.body)).encode()))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})
