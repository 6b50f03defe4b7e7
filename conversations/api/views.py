"""HTTP views: parse and identify, then call one service or selector.

Views hold no rules; they translate between the wire (contract JSON, status
codes) and the services. DRF's browsable API answers on the same URLs when a
browser asks for HTML.
"""

from __future__ import annotations

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
    body = {key: items[:limit]}
    if len(items) > limit:
        body["next"] = _next_link(request, cursor_name, cursor_of(items[limit - 1]), limit)
    return body


def _plain_page(view, request, key: str, cursor_name: str, read) -> HttpResponse | None:
    """`_paged`'s answer, byte for byte as DRF renders it, around items PostgreSQL wrote as JSON.

    `read(after, limit)` is a `*_page_json` selector; None (bad paging input, or
    no such owner) leaves the request to DRF's path.
    """
    try:
        limit, after = _page_limit(request), _cursor(request, cursor_name)
    except errors.ServiceError:
        return None
    page = read(after, limit)
    if page is None:
        return None
    body = b'{"' + key.encode() + b'":[' + page.items.encode() + b"]"
    if page.more:
        body += b',"next":' + plain_json.json_string(_next_link(request, cursor_name, page.last, limit))
    return view.plain_response(body + b"}", status.HTTP_200_OK)


def _header_user_id(request) -> int | None:
    """The User-Id header's id as authentication parses it; None when absent (its unknown user is DRF's to report)."""
    raw = request.META.get("HTTP_USER_ID")
    return None if raw is None else validation.positive_id(raw.strip(), "User-Id header")


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
        """The caller's page in one statement that also checks the caller exists (DRF's path reports if not)."""
        try:
            user_id = _header_user_id(request)
        except errors.ServiceError:
            return None
        if user_id is None:
            return None
        return _plain_page(self, request, "conversations", "after_id", lambda after, limit: (
            selectors.conversations_page_json(user_id=user_id, after_id=after, limit=limit)))

    @openapi.conversations_list
    def get(self, request):
        user = require_user(request)
        limit = _page_limit(request)
        rows = selectors.conversations_for_user(
            user_id=user.pk, after_id=_cursor(request, "after_id"), limit=limit + 1
        )
        conversations = [
            {"id": row["id"], "inserted_at": presenters.timestamp(row["inserted_at"]), "name": row["name"]}
            for row in rows
        ]
        return Response(_paged(request, "conversations", conversations, "after_id", lambda c: c["id"], limit))

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
        """The page in one statement; members-only reads, and a User-Id to check, take DRF's path."""
        if settings.READS_REQUIRE_MEMBER or "HTTP_USER_ID" in request.META:
            return None
        try:
            conversation_id = validation.positive_id(conversation_id, "Conversation id")
        except errors.ServiceError:
            return None
        # No such conversation reads as None: DRF's path answers the 404.
        return _plain_page(self, request, "messages", "after_index", lambda after, limit: (
            selectors.messages_page_json(conversation_id=conversation_id, after_index=after, limit=limit)))

    def plain_post(self, request, conversation_id: str):
        """The post in one statement; an Idempotency-Key, and every refusal, take DRF's path."""
        if "HTTP_IDEMPOTENCY_KEY" in request.META:
            return None
        data = plain_json.json_body(request)
        try:
            user_id = _header_user_id(request)
            conversation_id = validation.positive_id(conversation_id, "Conversation id")
            content = validation.message_content(data)
        except errors.ServiceError:
            return None
        if user_id is None:
            return None
        message = services.message_post(conversation_id=conversation_id, user_id=user_id, content=content)
        if message is None:
            return None
        return self.plain_response(plain_json.render(_message_body(message)), status.HTTP_201_CREATED)

    @openapi.messages_list
    def get(self, request, conversation_id: str):
        conversation_id = validation.positive_id(conversation_id, "Conversation id")
        if settings.READS_REQUIRE_MEMBER:
            services.check_member(conversation_id=conversation_id, user=require_user(request))
        limit = _page_limit(request)
        rows = selectors.messages_for_conversation(
            conversation_id=conversation_id, after_index=_cursor(request, "after_index"), limit=limit + 1
        )
        # An empty page may mean "no such conversation": only then is it worth a query.
        if not rows and not selectors.conversation_exists(conversation_id):
            raise services.conversation_not_found(conversation_id)
        messages = [
            {
                "id": row["id"],
                "content": row["content"],
                "user_id": row["user_id"],
                "channel_id": row["conversation_id"],
                "index": row["index"],
                "inserted_at": presenters.timestamp(row["inserted_at"]),
                "username": row["user__name"],
            }
            for row in rows
        ]
        return Response(_paged(request, "messages", messages, "after_index", lambda m: m["index"], limit))

    @openapi.messages_create
    def post(self, request, conversation_id: str):
        user = require_user(request)
        conversation_id = validation.positive_id(conversation_id, "Conversation id")
        content = validation.message_content(request.data)
        key = validation.idempotency_key(request.headers.get("Idempotency-Key"))
        message = services.message_create(
            conversation_id=conversation_id, user=user, content=content, idempotency_key=key
        )
        headers = {"Idempotent-Replayed": "true"} if message.replayed else None
        return Response(_message_body(message), status=status.HTTP_201_CREATED, headers=headers)


class ViewHorizonView(APIView):
    """Record how far the caller has read: `{"index": n}`; it never moves back."""

    @openapi.view_horizon_set
    def post(self, request, conversation_id: str):
        user = require_user(request)
        conversation_id = validation.positive_id(conversation_id, "Conversation id")
        index = validation.view_horizon_index(request.data)
        services.view_horizon_set(conversation_id=conversation_id, user=user, index=index)
        return Response(status=status.HTTP_204_NO_CONTENT)
