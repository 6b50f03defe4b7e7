"""Every refusal text of the chat, in one place: validation, services and selectors raise
them, and the OpenAPI description quotes them (conversations/api/openapi.py).

The texts are the contract's (CONTRACT.md section 1) where it has one.
"""

from __future__ import annotations

from core.http.errors import InvalidInput, NotFound

PARTICIPANT_COUNT = 2  # a conversation is between two users

# The request's own shape (conversations/validation.py).
CONTENT_REQUIRED = "content must be a non-empty string"
NAME_REQUIRED = "name must be a non-empty string"
INDEX_INVALID = "index must be a non-negative integer"
MISSING_USER_ID = "Please specify a user id by adding the User-Id header."

# The chat's rules (services and selectors).
CONVERSATION_NEEDS_TWO_USERS = f"Conversation must have {PARTICIPANT_COUNT} unique users"
UNKNOWN_PARTICIPANTS = "participant_ids provided did not match to two known participants"
CONVERSATION_EXISTS = "A conversation between these two users already exists with id {conversation_id}"
NOT_IN_CONVERSATION = "User with id {user_id} is not in conversation"
CONVERSATION_NOT_FOUND = "Conversation with id {conversation_id} not found"
IDEMPOTENCY_KEY_REUSED = (
    "Idempotency-Key was already used for a different request (another conversation or content); "
    "use a new key for a new message"
)


def unknown_user(user_id: int) -> InvalidInput:
    """The 400 for a well-formed User-Id that names nobody (the one-statement paths decide it too)."""
    return InvalidInput(f"User-Id header names no known user: {user_id}")


def conversation_exists(conversation_id: int) -> InvalidInput:
    return InvalidInput(CONVERSATION_EXISTS.format(conversation_id=conversation_id))


def not_in_conversation(user_id: int) -> InvalidInput:
    return InvalidInput(NOT_IN_CONVERSATION.format(user_id=user_id))


def conversation_not_found(conversation_id: int) -> NotFound:
    return NotFound(CONVERSATION_NOT_FOUND.format(conversation_id=conversation_id))
