"""Fixtures shared by the whole suite.

The suite runs against the real PostgreSQL on this machine (see pytest.ini for
the connection defaults). Tests that need other real parts (RabbitMQ, Consul,
NGINX, Chromium) start or reach them through fixtures in their own modules.
"""

import pytest
from rest_framework.test import APIClient

from conversations.management.commands.seed import SEED_USERS


@pytest.fixture
def api():
    """A DRF client that sends and expects JSON."""
    client = APIClient()
    client.default_format = "json"
    return client


@pytest.fixture
def users(db):
    """The tutorial's three seed users, as model rows (ids may not be 1..3)."""
    from conversations.models import User

    return [User.objects.create(name=name) for _, name in SEED_USERS]


@pytest.fixture
def conversation(users):
    """A conversation between the first two seed users."""
    from conversations import services

    return services.conversation_create(participant_ids=[users[0].pk, users[1].pk])
