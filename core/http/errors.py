"""Errors the API answers with, always as `{"error": "..."}`.

Services raise `ServiceError` subclasses; views never build error bodies by
hand. `exception_handler` turns these and DRF's own exceptions into the
contract's shape, and maps a lost database to 503 rather than 500.
"""

from __future__ import annotations

import functools
import logging

from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response

from core.db import liveness

logger = logging.getLogger(__name__)


class ServiceError(exceptions.APIException):
    """A request the service refuses, with the text the client sees."""

    status_code: int = status.HTTP_400_BAD_REQUEST

    def __init__(self, message: str):
        super().__init__(detail=message)
        self.message = message


class InvalidInput(ServiceError):
    status_code = status.HTTP_400_BAD_REQUEST


class NotFound(ServiceError):
    status_code = status.HTTP_404_NOT_FOUND


class Unprocessable(ServiceError):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY


DATABASE_UNAVAILABLE = "The database is unavailable; try again shortly."


def _flatten(detail) -> str:
    """DRF error details (str, list or dict) as one readable sentence."""
    if isinstance(detail, dict):
        return "; ".join(f"{key}: {_flatten(value)}" for key, value in detail.items())
    if isinstance(detail, (list, tuple)):
        return "; ".join(_flatten(item) for item in detail)
    return str(detail)


def exception_handler(exc, context):
    """DRF's exception handler, answering every error as `{"error": ...}`."""
    if isinstance(exc, Http404):
        exc = NotFound(str(exc) or "Not found.")
    if isinstance(exc, (OperationalError, InterfaceError)):
        logger.warning("database unavailable: %s", exc)
        liveness.forget()  # the next /health asks the database rather than trust an earlier answer
        return Response(
            {"error": DATABASE_UNAVAILABLE}, status=status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": "1"}
        )
    if isinstance(exc, DatabaseError):
        # A statement the database refused (a timeout, say): not the client's fault,
        # and nothing was committed. Logged with its traceback for the operator.
        logger.exception("database error")
        return Response(
            {"error": DATABASE_UNAVAILABLE}, status=status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": "1"}
        )
    if isinstance(exc, exceptions.APIException):
        if isinstance(exc, exceptions.ParseError):
            message = f"Malformed JSON in request body: {exc.detail}"
        else:
            message = _flatten(exc.detail)
        headers = {}
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header
        if getattr(exc, "wait", None):
            headers["Retry-After"] = str(exc.wait)
        return Response({"error": message}, status=exc.status_code, headers=headers)
    return None


def json_error(message: str, status_code: int) -> JsonResponse:
    """An error response outside DRF (middleware, Django's handlers)."""
    return JsonResponse({"error": message}, status=status_code, json_dumps_params={"separators": (",", ":")})


def safe_methods_only(view):
    """For plain Django views: any method but GET and HEAD gets the JSON 405 DRF views give."""

    @functools.wraps(view)
    def checked(request, *args, **kwargs):
        if request.method not in ("GET", "HEAD"):
            response = json_error(f'Method "{request.method}" not allowed.', 405)
            response["Allow"] = "GET, HEAD"
            return response
        return view(request, *args, **kwargs)

    return checked


def handler404(request, exception=None):
    return json_error(f"No route for {request.method} {request.path}", 404)


def handler500(request):
    return json_error("Internal server error", 500)


def handler400(request, exception=None):
    return json_error("Bad request", 400)
