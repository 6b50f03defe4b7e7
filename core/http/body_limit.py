"""Refuse oversized request bodies before anything reads them.

Runs first in the middleware stack. A declared `Content-Length` over
`JSON_BODY_LIMIT` is refused at once, unread (gunicorn reads it after the
answer, so the connection can serve again: core/http/gunicorn_keepalive.py). A chunked body (no
Content-Length) is read up to one byte past the limit, refused if it goes
past (413) or if its chunked framing is broken (400), and otherwise handed on
as a normal body — Django itself ignores chunked
bodies that its server did not de-chunk into a length.
"""

from __future__ import annotations

import io

from django.conf import settings
from django.core.handlers.wsgi import LimitedStream

from core.http.errors import json_error


def _too_large(limit: int):
    return json_error(f"Request body is larger than JSON_BODY_LIMIT ({limit} bytes)", 413)


class BodyLimitMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        limit = settings.JSON_BODY_LIMIT
        declared = request.META.get("CONTENT_LENGTH")
        if declared:
            try:
                length = int(declared)
            except ValueError:
                return json_error("Content-Length must be an integer", 400)
            if length > limit:
                return _too_large(limit)
        elif "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower():
            stream = request.META.get("wsgi.input")
            try:
                body = stream.read(limit + 1) if stream is not None else b""
            except Exception:  # noqa: BLE001 - the server's de-chunking failed: the client's framing
                # A chunk size that is not hex, a chunk without its CRLF, a body cut short: the
                # WSGI server raises its own parse errors (gunicorn's are not OSError, so Django's
                # UnreadablePostError does not cover them). Nothing was read that could be used.
                return json_error("Malformed chunked request body", 400)
            if len(body) > limit:
                return _too_large(limit)
            request.META["CONTENT_LENGTH"] = str(len(body))
            request._stream = LimitedStream(io.BytesIO(body), len(body))
        return self.get_response(request)
