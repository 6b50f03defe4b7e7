"""A gunicorn instance on the test database that pytest-django set up.

For system tests that need the real server (several workers, real sockets)
and real rows: the test marks itself
`pytest.mark.django_db(transaction=True, reset_sequences=True)`, so what it
writes is committed where the server can see it, ids start at 1, and the
tables are emptied afterwards.
"""

from __future__ import annotations

from django.core.management import call_command
from django.db import connection

from conversations import services
from conversations.models import Conversation, User


def database_env(**overrides: str) -> dict[str, str]:
    """PG* variables naming the test database, for a server in a subprocess."""
    settings = connection.settings_dict
    env = {
        "PGHOST": settings["HOST"],
        "PGPORT": str(settings["PORT"]),
        "PGUSER": settings["USER"],
        "PGDATABASE": settings["NAME"],
    }
    if settings.get("PASSWORD"):
        env["PGPASSWORD"] = settings["PASSWORD"]
    env.update(overrides)
    return env


def seed_chat() -> tuple[list[User], Conversation]:
    """The seed's three users (ids 1, 2, 3) and conversation 1 between users 1 and 2."""
    call_command("seed", verbosity=0)
    users = list(User.objects.order_by("pk"))
    conversation = services.conversation_create(participant_ids=[users[0].pk, users[1].pk])
    return users, conversation
