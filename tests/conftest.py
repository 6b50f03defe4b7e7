"""Fixtures for system tests that run real processes."""

import pytest

from tests.support.postgres import ThrowawayPostgres
from tests.support.processes import ConsulAgent


@pytest.fixture
def consul_agent():
    """A fresh real Consul agent (dev mode) on free loopback ports."""
    agent = ConsulAgent().start()
    try:
        yield agent
    finally:
        agent.cleanup()


@pytest.fixture(scope="session")
def throwaway_postgres():
    """A PostgreSQL cluster of the test run's own that checks passwords (scram-sha-256)."""
    cluster = ThrowawayPostgres().start()
    try:
        yield cluster
    finally:
        cluster.stop()
