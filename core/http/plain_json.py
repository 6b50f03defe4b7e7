"""Answering a plain JSON request on the hot routes without DRF's per-request machinery.

DRF's request wrapping, content negotiation and renderer cost more than the
work of a message post or a page read. A view lists the handlers that answer
with a `JsonAnswer` (`PlainJsonMixin.plain_methods`): the JSON text of the
answer, which the route's one service or selector (and PostgreSQL) wrote.
When the request is one DRF would answer with its JSON renderer and its body
reads as JSON, the mixin calls that handler itself and sends the text as it
is; a refusal the handler raises is rendered by DRF's exception handler.
Anything else (a browser asking for HTML, `?format=`, a body DRF must judge)
goes through DRF's dispatch to the same handler, and DRF renders the same
answer from the same text. Either way the status, body bytes and headers are
DRF's: there is one handler per operation, and two ways to deliver its answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from django.db import DatabaseError
from django.http import HttpResponse
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from core.http import errors

# Accept headers DRF answers with JSONRenderer; anything else (a browser's
# text/html, an `indent` parameter, ...) goes through DRF's negotiation.
JSON_ACCEPTS = frozenset({"", "*/*", "application/json"})
_JSON_CONTENT_TYPES = frozenset(
    {"application/json", "application/json; charset=utf-8", "application/json;charset=utf-8"}
)
_RENDERER = JSONRenderer()


@dataclass(frozen=True)
class JsonAnswer:
    """A handler's answer as JSON text, exactly as DRF's JSON renderer would write it."""

    body: bytes
    status: int = 200
    headers: dict[str, str] | None = None


def wants_plain_json(request) -> bool:
    """DRF would pick its JSON renderer, with no URL format override."""
    if request.META.get("HTTP_ACCEPT", "").strip().lower() not in JSON_ACCEPTS:
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
    """For an APIView: its `plain_methods` handlers return a `JsonAnswer`, sent without DRF when DRF would send JSON."""

    plain_methods: tuple[str, ...] = ()
    default_response_headers: dict[str, str]  # DRF's APIView, which this mixin precedes, provides it

    def dispatch(self, request, *args, **kwargs):
        method = request.method.lower()
        if method in self.plain_methods and wants_plain_json(request):
            if request.method == "POST":
                data = json_body(request)
                if data is None:  # no body DRF would parse the same way: DRF's parser answers
                    return super().dispatch(request, *args, **kwargs)
                request.data = data  # as DRF's Request has it
            try:
                answer = getattr(self, method)(request, *args, **kwargs)
                response = HttpResponse(answer.body, status=answer.status, content_type=_RENDERER.media_type)
                for header, value in (answer.headers or {}).items():
                    response[header] = value
            except (errors.ServiceError, DatabaseError) as exc:
                response = self._refusal(request, exc, *args, **kwargs)
            return self._as_drf_would(response)
        return super().dispatch(request, *args, **kwargs)

    def finalize_response(self, request, response, *args, **kwargs):
        """On DRF's path, a handler's `JsonAnswer` becomes the same data for DRF's renderers."""
        if isinstance(response, JsonAnswer):
            response = Response(json.loads(response.body), status=response.status, headers=response.headers)
        return super().finalize_response(request, response, *args, **kwargs)

    def _refusal(self, request, exc, *args, **kwargs) -> HttpResponse:
        """What DRF's exception handler answers: a service's refusal, or a lost or refusing database's 503 (and its log line)."""
        answer = errors.exception_handler(exc, {"view": self, "args": args, "kwargs": kwargs, "request": request})
        if answer is None:
            raise exc
        response = HttpResponse(render(answer.data), status=answer.status_code, content_type=_RENDERER.media_type)
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
