"""Fixtures shared by the whole suite, and its one rule for where a test lives.

In-process tests sit beside the app they test (`<app>/tests/`); tests that
start processes (servers, agents, workers, jobs, RabbitMQ vhosts) sit under
`tests/`, and every one of them is marked `slow` here, so `-m "not slow"` runs
the fast in-process suite alone.

The suite runs against the real PostgreSQL on this machine (see pytest.ini for
the connection defaults). Tests that need other real parts (RabbitMQ, Consul,
NGINX, Chromium) start or reach them through fixtures in their own modules.
"""

from pathlib import Path

import pytest
from rest_framework.test import APIClient

from conversations.management.commands.seed import SEED_USERS

PROCESS_TESTS = Path(__file__).resolve().parent / "tests"


def pytest_collection_modifyitems(items):
    for item in items:
        if PROCESS_TESTS in item.path.parents:
            item.add_marker(pytest.mark.slow)


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
