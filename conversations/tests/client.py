"""What the in-process tests send most: a message post, as a chat client sends it."""

from __future__ import annotations


def post_message(api, conversation_id: int, user_id: int, content: str = "hello", **headers: str):
    """POST `content` to the conversation as `user_id` (its User-Id header), JSON; more headers as Django's META keys."""
    return api.post(
        f"/conversations/{conversation_id}/messages",
        {"content": content},
        format="json",
        HTTP_USER_ID=str(user_id),
        **headers,
    )
