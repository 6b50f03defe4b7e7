"""Fixtures for system tests that run real processes."""

import pytest

from tests.support.processes import ConsulAgent


@pytest.fixture
def consul_agent():
    """A fresh real Consul agent (dev mode) on free loopback ports."""
    agent = ConsulAgent().start()
    try:
        yield agent
    finally:
        agent.cleanup()
