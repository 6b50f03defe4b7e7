"""Fixtures for the Consul and deploy-script tests.

The instances these tests start are real gunicorn processes on PostgreSQL,
started by the project's own scripts against a real Consul agent.
"""

import os

import pytest

from tests.support.infrastructure import Infrastructure, migrated_database

# Short enough that every transition shows within seconds; deployments keep
# the schema's defaults (check every 15s, retry within 10s, drain 5s).
FAST_DISCOVERY = {"CONSUL_CHECK_INTERVAL": "1s", "CONSUL_RETRY_INTERVAL": "1s", "SHUTDOWN_DRAIN_SECONDS": "2"}


@pytest.fixture(scope="session")
def instances_db():
    """A migrated database for the instances the tests start (not the test run's own database)."""
    return migrated_database(f"{os.environ['PGDATABASE']}_instances")


@pytest.fixture
def infrastructure(consul_agent, instances_db, tmp_path):
    """The deploy scripts, local runtime, bound to a fresh Consul agent and a private state folder."""
    infra = Infrastructure(consul_agent, tmp_path / "state", instances_db, **FAST_DISCOVERY)
    try:
        yield infra
    finally:
        infra.cleanup()
