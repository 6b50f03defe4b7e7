"""HTTP views: parse and identify, then call one service or selector.

Views hold no rules; they translate between the wire (contract JSON, status
codes) and the services. DRF's browsable API answers on the same URLs when a
browser asks for HTML.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from conversations import presenters, selectors, services, validation
from conversations.api import openapi, pages
from conversations.api.authentication import require_user
from core.db import liveness
from core.http import errors, plain_json


@errors.safe_methods_only
def health(request):
    """200 `OK` while this instance can serve: the database answers (a check at most a second old, core.db.liveness)."""
    if not liveness.database_answers():
        return HttpResponse("Database unavailable", status=503, content_type="text/plain")
    return HttpResponse("OK", content_type="text/plain")


def _paged(request, key: str, items: list, cursor_name: str, cursor_of, limit: int) -> dict:
    """`{key: items}`, plus a `next` link when a further page exists.

    Selectors are asked for `limit + 1` rows; the extra row only says "more".
    """
    body: dict[str, Any] = {key: items[:limit]}
    if len(items) > limit:
        last = cursor_of(items[limit - 1])
        body["next"] = pages.next_link(request.build_absolute_uri, request.path, cursor_name, last, limit)
    return body


def _user_id_header(request) -> str | None:
    return request.META.get("HTTP_USER_ID")


class UsersView(APIView):
    """Users of the chat. `POST {"name": ...}` adds one."""

    @openapi.users_list
    def get(self, request):
        limit = pages.page_limit(request.GET)
        rows = selectors.users_page(after_id=pages.cursor(request.GET, "after_id"), limit=limit + 1)
        users = [presenters.user(row) for row in rows]
        return Response(_paged(request, "users", users, "after_id", lambda u: u["id"], limit))

    @openapi.users_create
    def post(self, request):
        user = services.user_create(name=validation.user_name(request.data))
        return Response({"user": presenters.user(user)}, status=status.HTTP_201_CREATED)


class ConversationsView(plain_json.PlainJsonMixin, APIView):
    """Two-person conversations. `GET` lists the caller's (header `User-Id`)."""

    plain_methods = ("get",)
    authentication_classes = ()  # the caller is the page statement's to check (selectors.conversations_page_read)

    @openapi.conversations_list
    def get(self, request):
        read, limit = pages.conversations_read(request.GET, _user_id_header(request))
        return pages.answer(pages.CONVERSATIONS, selectors.run(read), limit, request.build_absolute_uri, request.path)

    @openapi.conversations_create
    def post(self, request):
        conversation = services.conversation_create(participant_ids=validation.participant_ids(request.data))
        return Response({"conversation": presenters.conversation(conversation)}, status=status.HTTP_201_CREATED)


class MessagesView(plain_json.PlainJsonMixin, APIView):
    """A conversation's messages in index order, paged by `after_index` and `limit`; `POST` adds one."""

    plain_methods = ("get", "post")
    authentication_classes = ()  # the caller is the page's or the post's statement to check

    @openapi.messages_list
    def get(self, request, conversation_id: str):
        read, limit = pages.messages_read(conversation_id, request.GET, _user_id_header(request))
        return pages.answer(pages.MESSAGES, selectors.run(read), limit, request.build_absolute_uri, request.path)

    @openapi.messages_create
    def post(self, request, conversation_id: str):
        user_id = pages.required_caller_id(_user_id_header(request))
        conversation_pk = validation.positive_id(conversation_id, "Conversation id")
        content = validation.message_content(request.data)
        key = validation.idempotency_key(request.headers.get("Idempotency-Key"))
        message = services.message_create(
            conversation_id=conversation_pk, user_id=user_id, content=content, idempotency_key=key
        )
        headers = {"Idempotent-Replayed": "true"} if message.replayed else None
        return plain_json.JsonAnswer(
            plain_json.render({"message": presenters.message(message)}), status.HTTP_201_CREATED, headers
        )


class ViewHorizonView(APIView):
    """Record how far the caller has read: `{"index": n}`; it never moves back."""

    @openapi.view_horizon_set
    def post(self, request, conversation_id: str):
        user = require_user(request)
        conversation_pk = validation.positive_id(conversation_id, "Conversation id")
        index = validation.view_horizon_index(request.data)
        services.view_horizon_set(conversation_id=conversation_pk, user=user, index=index)
        return Response(status=status.HTTP_204_NO_CONTENT)
