"""HTTP views: parse and identify, then call one service or selector.

Views hold no rules; they translate between the wire (contract JSON, status
codes) and the services. DRF's browsable API answers on the same URLs when a
browser asks for HTML.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.db import connection
from django.http import HttpResponse
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from conversations import presenters, selectors, services, validation
from conversations.api import openapi
from conversations.api.authentication import require_user
from conversations.validation import DEFAULT_PAGE, MAX_PAGE
from core.http import errors, plain_json


@errors.safe_methods_only
def health(request):
    """200 `OK` while this instance can serve: the database answers."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:  # any failure to reach the database means "not healthy"
        return HttpResponse("Database unavailable", status=503, content_type="text/plain")
    return HttpResponse("OK", content_type="text/plain")


# `request.GET` is DRF's `query_params` too, so these serve both the DRF and the plain paths.
def _page_limit(request) -> int:
    return validation.query_int(request.GET, "limit", default=DEFAULT_PAGE, minimum=1, maximum=MAX_PAGE)


def _cursor(request, name: str) -> int:
    return validation.query_int(request.GET, name, default=0, minimum=0, maximum=validation.MAX_ID)


def _next_link(request, cursor_name: str, cursor_value: int, limit: int) -> str:
    query = urlencode({cursor_name: cursor_value, "limit": limit})
    return request.build_absolute_uri(f"{request.path}?{query}")


def _paged(request, key: str, items: list, cursor_name: str, cursor_of, limit: int) -> dict:
    """`{key: items}`, plus a `next` link when a further page exists.

    Selectors are asked for `limit + 1` rows; the extra row only says "more".
    """
    body: dict[str, Any] = {key: items[:limit]}
    if len(items) > limit:
        body["next"] = _next_link(request, cursor_name, cursor_of(items[limit - 1]), limit)
    return body


def _page_body(request, key: str, cursor_name: str, page: selectors.JsonPage, limit: int) -> bytes:
    """`{key: [items], "next": ...}` around a page's JSON text, byte for byte as DRF renders it."""
    body = b'{"' + key.encode() + b'":[' + page.items.encode() + b"]"
    if page.more and page.last is not None:  # a further page follows a non-empty one
        body += b',"next":' + plain_json.json_string(_next_link(request, cursor_name, page.last, limit))
    return body + b"}"


def _page_response(request, key: str, cursor_name: str, page: selectors.JsonPage, limit: int) -> Response:
    """The same page for DRF's renderers (the browsable API, `?format=`, an `indent`)."""
    return Response(json.loads(_page_body(request, key, cursor_name, page, limit)))


def _header_user_id(request) -> int | None:
    """The User-Id header's id as authentication parses it; None when absent (its unknown user is the selector's to report)."""
    raw = request.META.get("HTTP_USER_ID")
    return None if raw is None else validation.positive_id(raw.strip(), "User-Id header")


def _caller_id(request) -> int | None:
    """The caller's id on DRF's path, where authentication has already checked the user exists."""
    return None if request.user is None else request.user.pk


class UsersView(APIView):
    """Users of the chat. `POST {"name": ...}` adds one."""

    @openapi.users_list
    def get(self, request):
        limit = _page_limit(request)
        rows = selectors.users_page(after_id=_cursor(request, "after_id"), limit=limit + 1)
        users = [presenters.user(row) for row in rows]
        return Response(_paged(request, "users", users, "after_id", lambda u: u["id"], limit))

    @openapi.users_create
    def post(self, request):
        user = services.user_create(name=validation.user_name(request.data))
        return Response({"user": presenters.user(user)}, status=status.HTTP_201_CREATED)


class ConversationsView(plain_json.PlainJsonMixin, APIView):
    """Two-person conversations. `GET` lists the caller's (header `User-Id`)."""

    def plain_get(self, request):
        """The caller's page: input checked here (a refusal of it is DRF's), the rest in the selector."""
        try:
            user_id = _header_user_id(request)
            limit, after = _page_limit(request), _cursor(request, "after_id")
        except errors.ServiceError:
            return None
        if user_id is None:
            return None
        page = selectors.conversations_page(user_id=user_id, after_id=after, limit=limit)
        return self.plain_response(_page_body(request, "conversations", "after_id", page, limit), status.HTTP_200_OK)

    @openapi.conversations_list
    def get(self, request):
        user = require_user(request)
        limit = _page_limit(request)
        page = selectors.conversations_page(user_id=user.pk, after_id=_cursor(request, "after_id"), limit=limit)
        return _page_response(request, "conversations", "after_id", page, limit)

    @openapi.conversations_create
    def post(self, request):
        conversation = services.conversation_create(participant_ids=validation.participant_ids(request.data))
        return Response({"conversation": presenters.conversation(conversation)}, status=status.HTTP_201_CREATED)


def _message_body(message: services.PostedMessage) -> dict:
    return {
        "message": {
            "id": message.id,
            "content": message.content,
            "index": message.index,
            "user_id": message.user_id,
            "username": message.username,
            "conversation_id": message.conversation_id,
            "inserted_at": presenters.timestamp(message.inserted_at),
        }
    }


class MessagesView(plain_json.PlainJsonMixin, APIView):
    """A conversation's messages in index order, paged by `after_index` and `limit`."""

    def plain_get(self, request, conversation_id: str):
        """The page: input checked here (a refusal of it is DRF's), the caller and the page in one selector."""
        try:
            user_id = _header_user_id(request)
            conversation_pk = validation.positive_id(conversation_id, "Conversation id")
            limit, after = _page_limit(request), _cursor(request, "after_index")
            validation.wait_seconds(request.GET)  # waiting is the live listener's (conversations/live)
        except errors.ServiceError:
            return None
        if user_id is None and settings.READS_REQUIRE_MEMBER:
            return None
        page = selectors.messages_page(conversation_id=conversation_pk, after_index=after, limit=limit, user_id=user_id)
        return self.plain_response(_page_body(request, "messages", "after_index", page, limit), status.HTTP_200_OK)

    def plain_post(self, request, conversation_id: str):
        """The post: input checked here (a refusal of it is DRF's), the caller, the checks and the writes in the service."""
        if "HTTP_IDEMPOTENCY_KEY" in request.META:
            return None
        data = plain_json.json_body(request)
        try:
            user_id = _header_user_id(request)
            conversation_pk = validation.positive_id(conversation_id, "Conversation id")
            content = validation.message_content(data)
        except errors.ServiceError:
            return None
        if user_id is None:
            return None
        message = services.message_create(conversation_id=conversation_pk, user_id=user_id, content=content)
        return self.plain_response(plain_json.render(_message_body(message)), status.HTTP_201_CREATED)

    @openapi.messages_list
    def get(self, request, conversation_id: str):
        conversation_pk = validation.positive_id(conversation_id, "Conversation id")
        if settings.READS_REQUIRE_MEMBER:
            require_user(request)
        limit = _page_limit(request)
        validation.wait_seconds(request.GET)
        page = selectors.messages_page(
            conversation_id=conversation_pk,
            after_index=_cursor(request, "after_index"),
            limit=limit,
            user_id=_caller_id(request),
        )
        return _page_response(request, "messages", "after_index", page, limit)

    @openapi.messages_create
    def post(self, request, conversation_id: str):
        user = require_user(request)
        conversation_pk = validation.positive_id(conversation_id, "Conversation id")
        content = validation.message_content(request.data)
        key = validation.idempotency_key(request.headers.get("Idempotency-Key"))
        message = services.message_create(
            conversation_id=conversation_pk, user_id=user.pk, content=content, idempotency_key=key
        )
        headers = {"Idempotent-Replayed": "true"} if message.replayed else None
        return Response(_message_body(message), status=status.HTTP_201_CREATED, headers=headers)


class ViewHorizonView(APIView):
    """Record how far the caller has read: `{"index": n}`; it never moves back."""

    @openapi.view_horizon_set
    def post(self, request, conversation_id: str):
        user = require_user(request)
        conversation_pk = validation.positive_id(conversation_id, "Conversation id")
        index = validation.view_horizon_index(request.data)
        services.view_horizon_set(conversation_id=conversation_pk, user=user, index=index)
        return Response(status=status.HTTP_204_NO_CONTENT)
