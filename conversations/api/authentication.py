"""Identity: the caller names themselves with the `User-Id` header.

There is no login in this system (as in the reference): the header is trusted.
A missing header leaves the request anonymous (views that need a user say so
with the contract's text); an empty or malformed header, or an unknown user, is
a 400.
"""

from __future__ import annotations

from rest_framework.authentication import BaseAuthentication

from conversations import validation
from conversations.models import User
from conversations.refusals import MISSING_USER_ID, unknown_user
from core.http.errors import InvalidInput


class UserIdHeaderAuthentication(BaseAuthentication):
    def authenticate(self, request):
        raw = request.headers.get("User-Id")
        if raw is None:
            return None
        user_id = validation.positive_id(raw.strip(), "User-Id header")
        user = User.objects.filter(pk=user_id).only("id", "name").first()
        if user is None:
            raise unknown_user(user_id)
        return (user, None)

    def authenticate_header(self, request):
        return None


def require_user(request) -> User:
    """The calling user, or the contract's 400 when the header is missing."""
    user = request.user
    if user is None:
        raise InvalidInput(MISSING_USER_ID)
    return user
