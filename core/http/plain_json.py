"""Answering a plain JSON request on the hot routes without DRF's per-request machinery.

DRF's request wrapping, content negotiation, authentication query and
renderer cost more than the work of a message post or a page read. A view
tries its plain path first (`PlainJsonMixin.plain_<method>`) when the request
is one DRF would answer with its JSON renderer. The plain path parses the
request's input; if that input is refused it returns None having done nothing,
and DRF handles the request from the start (so bad input is refused with DRF's
texts and order of checks). Otherwise it calls the route's one service or
selector, which does the work or raises the refusal it decided (unknown user,
not a participant, no such conversation): the answer, or that refusal as DRF's
exception handler renders it, is the response, with exactly DRF's status, body
bytes and headers. The work is never done a second time on DRF's path.
"""

from __future__ import annotations

import json

from django.db import DatabaseError
from django.http import HttpResponse
from rest_framework.renderers import JSONRenderer

from core.db import pg
from core.http import errors

# Accept headers DRF answers with JSONRenderer; anything else (a browser's
# text/html, an `indent` parameter, ...) goes through DRF's negotiation.
_JSON_ACCEPTS = frozenset({"", "*/*", "application/json"})
_JSON_CONTENT_TYPES = frozenset(
    {"application/json", "application/json; charset=utf-8", "application/json;charset=utf-8"}
)
_RENDERER = JSONRenderer()


def wants_plain_json(request) -> bool:
    """DRF would pick its JSON renderer, with no URL format override."""
    if request.META.get("HTTP_ACCEPT", "").strip().lower() not in _JSON_ACCEPTS:
        return False
    return not request.META.get("QUERY_STRING") or "format" not in request.GET


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def json_body(request):
    """The body as DRF's JSON parser reads it (UTF-8, no NaN or Infinity); None if DRF should judge it."""
    if request.META.get("CONTENT_TYPE", "").lower() not in _JSON_CONTENT_TYPES:
        return None
    try:
        return json.loads(request.body.decode("utf-8"), parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # malformed, not UTF-8, nested too deep: DRF's 400
        return None


def render(data) -> bytes:
    """`data` as DRF's JSON renderer writes it, byte for byte."""
    return _RENDERER.render(data)


def json_string(value: str) -> bytes:
    return render(value)


class PlainJsonMixin:
    """For an APIView: try `plain_get`/`plain_post` before DRF's dispatch."""

    default_response_headers: dict[str, str]  # DRF's APIView, which this mixin precedes, provides it

    def dispatch(self, request, *args, **kwargs):
        plain = getattr(self, f"plain_{request.method.lower()}", None)
        if plain is not None and pg.enabled() and wants_plain_json(request):
            try:
                response = plain(request, *args, **kwargs)
            except (errors.ServiceError, DatabaseError) as exc:
                # Never retried on the DRF path: the service decided, and a post may have reached the database.
                response = self._refusal(request, exc, *args, **kwargs)
            if response is not None:
                return self._as_drf_would(response)
        return super().dispatch(request, *args, **kwargs)

    def plain_response(self, body: bytes, status: int) -> HttpResponse:
        return HttpResponse(body, status=status, content_type=_RENDERER.media_type)

    def _refusal(self, request, exc, *args, **kwargs) -> HttpResponse:
        """What DRF's exception handler answers: a service's refusal, or a lost or refusing database's 503 (and its log line)."""
        answer = errors.exception_handler(exc, {"view": self, "args": args, "kwargs": kwargs, "request": request})
        if answer is None:
            raise exc
        response = self.plain_response(render(answer.data), answer.status_code)
        for header, value in answer.items():
            if header.lower() != "content-type":
                response[header] = value
        return response

    def _as_drf_would(self, response: HttpResponse) -> HttpResponse:
        """The headers DRF's `finalize_response` adds (`Allow`, `Vary: Accept`), which depend on the view's class alone."""
        headers = _DRF_HEADERS.get(type(self))
        if headers is None:
            headers = _DRF_HEADERS[type(self)] = dict(self.default_response_headers)
        for header, value in headers.items():
            response[header] = value
        return response


_DRF_HEADERS: dict[type, dict[str, str]] = {}
