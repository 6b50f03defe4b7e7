"""The hot reads answered on the live listener's event loop, without Django's request cycle.

NGINX sends every GET of a message page, of the conversation list and of
`/health` to the instance's live listener (gunicorn's asyncio worker; Consul's
check asks the ordinary port's `/health`, and so does the listener's own
start-up check). A plain JSON request there (what DRF would answer with its JSON renderer) is
answered here: its statement runs on one of the listener's asyncio
connections (core.db.async_pool) and the answer is the one the WSGI route
gives, byte for byte and header for header, with its log line, its metrics
and its deadline. What is read and refused is decided in one place for both
servers (conversations.api.pages, conversations.selectors); what this module
adds is only how the request arrives and the answer leaves.

Anything else (a browser asking for HTML, `?format=`, a Host Django would
judge, any other path) returns None, and the listener passes the request to
Django as it is (core.http.wsgi_bridge). A long-poll's and a stream's reads
come here too.

Measured on one process (gunicorn's asyncio worker with uvloop, wrk with 16
connections, a page of 100): about 0.4 ms of CPU per page read here against
1.1 to 1.4 ms through Django under gthread (docs/performance.md).
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any
from urllib.parse import parse_qsl

import psycopg
from django.conf import settings
from django.http.request import split_domain_port, validate_host

from conversations.api import pages
from conversations.api.views import ConversationsView, MessagesView
from core.db import liveness
from core.db.async_pool import AsyncReadPool, django_connect_params
from core.http import errors, observability, plain_json
from core.http.errors import ServiceError
from core.http.wsgi_bridge import WsgiAnswer

_request_logger = logging.getLogger("django.request")
_PAGE = re.compile(r"^/conversations/([0-9]+)/messages$")
_HEALTH_SQL = "SELECT 1"


def _connect_params() -> dict[str, Any]:
    return django_connect_params(prepare=settings.PG_PREPARED_STATEMENTS)


def _deadline() -> float | None:
    return settings.DATABASE_REQUEST_DEADLINE or None


def _security_headers() -> list[tuple[bytes, bytes]]:
    """What Django's SecurityMiddleware adds to an answer over plain HTTP."""
    headers = []
    if settings.SECURE_CONTENT_TYPE_NOSNIFF:
        headers.append((b"x-content-type-options", b"nosniff"))
    if settings.SECURE_REFERRER_POLICY:
        policy = settings.SECURE_REFERRER_POLICY
        value = policy if isinstance(policy, str) else ",".join(policy)
        headers.append((b"referrer-policy", value.encode()))
    if settings.SECURE_CROSS_ORIGIN_OPENER_POLICY:
        headers.append((b"cross-origin-opener-policy", settings.SECURE_CROSS_ORIGIN_OPENER_POLICY.encode()))
    return headers


def _view_headers(view_class: type) -> list[tuple[bytes, bytes]]:
    """The headers DRF gives every answer of `view_class` (`Allow`, `Vary: Accept`), as its view for a request has them
    (Django's `View.setup` gives a view with `get` a `head`, which `Allow` then names)."""
    view = view_class()
    view.setup(None)
    return [(name.lower().encode(), value.encode()) for name, value in view.default_response_headers.items()]


class NativeReads:
    """`await reads.answer(environ)`: the WSGI route's answer to a plain JSON read, or None for Django to give."""

    def __init__(self) -> None:
        self.pool = AsyncReadPool(_connect_params, _deadline)
        security = _security_headers()
        self._json = {
            "messages": [(b"content-type", b"application/json"), *_view_headers(MessagesView), *security],
            "conversations": [(b"content-type", b"application/json"), *_view_headers(ConversationsView), *security],
        }
        self._text = [(b"content-type", b"text/plain"), *security]
        self._routes = {
            "messages": observability.route_of("/conversations/1/messages"),
            "conversations": observability.route_of("/conversations"),
            "health": observability.route_of("/health"),
        }
        self._healthy_at: float | None = None  # when the last successful check began (core.db.liveness's rule)

    async def close(self) -> None:
        await self.pool.close()

    async def answer(self, environ: dict[str, Any]) -> WsgiAnswer | None:
        """The WSGI route's answer to this request (a WSGI environ, as core.http.wsgi_bridge builds it), or None."""
        started = time.perf_counter()
        if environ["REQUEST_METHOD"] != "GET":
            return None
        path = environ["PATH_INFO"]
        conversation = None
        if path == "/health":
            kind = "health"
        elif path == "/conversations":
            kind = "conversations"
        else:
            page_path = _PAGE.match(path)
            if page_path is None:
                return None
            kind, conversation = "messages", page_path.group(1)
        host = _host(environ)
        query = _query(environ)
        if host is None or query is None:
            return None
        request_id = observability.request_id(environ)
        if kind == "health":
            answer = await self._health(request_id)
        else:
            answer = await self._page(kind, conversation, query, environ, host, request_id)
        if answer.status >= 400:
            _log_refusal(answer.status, path)
        observability.record("GET", path, self._routes[kind], answer.status, time.perf_counter() - started, request_id)
        return answer

    async def _page(
        self,
        kind: str,
        conversation: str | None,
        query: dict[str, str],
        environ: dict[str, Any],
        host: str,
        request_id: str,
    ) -> WsgiAnswer:
        headers = [*self._json[kind], (b"x-request-id", request_id.encode())]
        user_id = environ.get("HTTP_USER_ID")
        try:
            if conversation is not None:
                read, limit = pages.messages_read(conversation, query, user_id)
                what = pages.MESSAGES
            else:
                read, limit = pages.conversations_read(query, user_id)
                what = pages.CONVERSATIONS
            json_page = read.interpret(await self.pool.fetchone(read.sql, read.params, prepare=_prepare()))
        except ServiceError as refusal:
            return WsgiAnswer(refusal.status_code, headers, plain_json.render({"error": refusal.message}))
        except psycopg.Error as exc:
            _database_failed(exc)
            self._healthy_at = None
            headers.append((b"retry-after", b"1"))
            return WsgiAnswer(503, headers, plain_json.render({"error": errors.DATABASE_UNAVAILABLE}))
        scheme_host = f"{environ['wsgi.url_scheme']}://{host}"
        body = pages.answer(what, json_page, limit, lambda location: scheme_host + location, environ["PATH_INFO"])
        return WsgiAnswer(200, headers, body.body)

    async def _health(self, request_id: str) -> WsgiAnswer:
        headers = [*self._text, (b"x-request-id", request_id.encode())]
        if await self._database_answers():
            return WsgiAnswer(200, headers, b"OK")
        return WsgiAnswer(503, headers, b"Database unavailable")

    async def _database_answers(self) -> bool:
        """core.db.liveness on this loop: a success stays true for liveness.MAX_AGE; a failure is never kept."""
        started = time.monotonic()
        if self._healthy_at is not None and started - self._healthy_at < liveness.MAX_AGE:
            return True
        try:
            await self.pool.fetchone(_HEALTH_SQL, {}, prepare=False)
        except psycopg.Error:
            self._healthy_at = None
            return False
        self._healthy_at = started
        return True


def _prepare() -> bool:
    """psycopg's `prepare` for a hot statement: at once (as core.db.pg's cursor), or never with PG_PREPARED_STATEMENTS off."""
    return bool(settings.PG_PREPARED_STATEMENTS)


def _host(environ: dict[str, Any]) -> str | None:
    """The Host Django's `request.get_host()` would accept, or None for Django to judge (and refuse) itself."""
    if settings.USE_X_FORWARDED_HOST or settings.SECURE_PROXY_SSL_HEADER or settings.DISALLOWED_USER_AGENTS:
        return None
    host = environ.get("HTTP_HOST")
    if not host:
        return None
    domain, _ = split_domain_port(host)
    return host if domain and validate_host(domain, settings.ALLOWED_HOSTS) else None


def _query(environ: dict[str, Any]) -> dict[str, str] | None:
    """The query as Django's `request.GET.get` reads it (the last of a repeated name), or None when DRF would not
    answer with its JSON renderer (`?format=`, an Accept other than JSON) or the query is not plain ASCII."""
    if environ.get("HTTP_ACCEPT", "").strip().lower() not in plain_json.JSON_ACCEPTS:
        return None
    raw = environ.get("QUERY_STRING", "")
    if not raw.isascii():
        return None
    query = dict(parse_qsl(raw, keep_blank_values=True))
    return None if "format" in query else query


def _database_failed(exc: psycopg.Error) -> None:
    """What core.http.errors logs for the same failure on the WSGI side."""
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        errors.logger.warning("database unavailable: %s", exc)
    else:
        errors.logger.exception("database error")


_REASONS = {400: "Bad Request", 404: "Not Found", 503: "Service Unavailable"}


def _log_refusal(status: int, path: str) -> None:
    """Django's own line for an answer of 400 and above (django.request: a warning, an error from 500)."""
    reason = _REASONS.get(status, str(status))
    if status >= 500:
        _request_logger.error("%s: %s", reason, path)
    else:
        _request_logger.warning("%s: %s", reason, path)
