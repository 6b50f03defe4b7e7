"""Fixtures shared by the whole suite, and its one rule for where a test lives.

In-process tests sit beside the app they test (`<app>/tests/`); tests that
start processes (servers, agents, workers, jobs, RabbitMQ vhosts) sit under
`tests/`, and every one of them is marked `slow` here, so `-m "not slow"` runs
the fast in-process suite alone.

The suite runs under pytest-xdist (`make test`: `-n`, `--dist loadgroup`).
Tests are marked here by where they live: `docker` (the machine's Docker
engine), `netns` (the `messenger-host-*` namespaces and their bridge), `stack`
(a whole `make up` or compose stack). The `docker` and `netns` ones hold
fixed-name resources of the machine and share one xdist group, so they run one
after the other on one worker while everything else spreads over the others. A
new test file gets its marks by its location, with nothing to remember.

The suite runs against the real PostgreSQL on this machine (pytest.ini sets PGHOST;
the rest are core/config.py's defaults). Tests that need other real parts (RabbitMQ, Consul,
NGINX, Chromium) start or reach them through fixtures in their own modules.
"""

import os
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from conversations.management.commands.seed import SEED_USERS
from core.config import SCHEMA_BY_NAME
from tests.support import figures, quiet_machine

ROOT = Path(__file__).resolve().parent
PROCESS_TESTS = ROOT / "tests"

# Where the tests that need a fixed-name resource live, and the marks they get:
# a folder (every file under it) or one file of tests/.
LOCATION_MARKS = {
    "docker": ("docker/", "test_hosts.py"),
    "netns": ("test_hosts.py",),
    "stack": (
        "test_stack_e2e.py",
        "test_hosts.py",
        "docker/test_compose.py",
        "docker/test_docker_runtime.py",
    ),
}
# The one xdist group of the tests that hold the machine's fixed names: the default engine and the seed's container
# names, the namespaces and their bridge. A local-runtime stack (test_stack_e2e.py) has its own ports, state folder
# and database, so it spreads like any other process test.
SERIAL_GROUP = "machine"
SERIAL_MARKS = frozenset({"docker", "netns"})


def _location_marks(path: Path) -> list[str]:
    if PROCESS_TESTS not in path.parents:
        return []
    where = path.relative_to(PROCESS_TESTS).as_posix()
    return [
        mark
        for mark, places in LOCATION_MARKS.items()
        if any(where == place or (place.endswith("/") and where.startswith(place)) for place in places)
    ]


def pytest_configure(config):
    config.pluginmanager.register(SerialGroupFirst(), "serial-group-first")
    config.pluginmanager.register(MachineShare(), "machine-share")
    # Names the process tests derive from PGDATABASE (`<name>_instances`, `<name>_stack`, ...) are dropped and
    # created by fixed name: under xdist each worker gets its own (pytest-django already suffixes the test database).
    # PGDATABASE is set for them whether or not the caller did (pytest.ini leaves it to the schema's default).
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    database = os.environ.get("PGDATABASE") or SCHEMA_BY_NAME["PGDATABASE"].default
    if worker and not database.endswith(f"_{worker}"):
        database = f"{database}_{worker}"
    os.environ["PGDATABASE"] = database


def pytest_sessionfinish(session, exitstatus):
    # The databases the process tests made on the machine's PostgreSQL (each worker drops its own).
    from tests.support.infrastructure import drop_created_databases

    drop_created_databases()


def pytest_itemcollected(item):
    # As each test is collected, before any pytest_collection_modifyitems: `-m docker` selects by these marks, and
    # pytest-xdist (which reads xdist_group in its own modifyitems hook on each worker) sees the group.
    if PROCESS_TESTS in item.path.parents:
        item.add_marker(pytest.mark.slow)
    marks = _location_marks(item.path)
    for mark in marks:
        item.add_marker(getattr(pytest.mark, mark))
    if SERIAL_MARKS.intersection(marks):
        item.add_marker(pytest.mark.xdist_group(SERIAL_GROUP))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadgroup` with the serial group decided by location, in the controller.

    pytest-xdist 3.8 puts a test in its group by rewriting `item._nodeid`, which pytest 9 no longer reads (a node's
    id is `item._id`), so its own loadgroup runs every test alone. This scheduler derives the group from the test's
    file, the same rule as the marks above.
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]

    class MachineGroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = ROOT / nodeid.split("::", 1)[0]
            return SERIAL_GROUP if SERIAL_MARKS.intersection(_location_marks(path)) else nodeid

    return MachineGroupScheduling(config, log)


class SerialGroupFirst:
    """The serial group is the suite's longest run: handed out first, it starts while the others spread."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items):
        # Last, after pytest-django's own ordering by database use; the relative order is kept.
        items.sort(key=lambda item: not SERIAL_MARKS.intersection(_location_marks(item.path)))


class MachineShare:
    """Every test shares the machine; a `quiet_machine` drill has it to itself (tests/support/quiet_machine.py).

    Held over the whole of a test's run, its fixtures' setup and teardown included: the first test of a module
    starts that module's processes, and they are what would load the machine under a drill.
    """

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        state_dir = ROOT / ".state"
        if item.get_closest_marker("quiet_machine"):
            with quiet_machine.exclusive(state_dir) as waited:
                if waited >= 1:  # what the drill cost the others, for the suite's timing (docs/testing.md)
                    figures.report("quiet machine", item.name, f"waited {waited:.0f}s for the other tests to finish")
                return (yield)
        with quiet_machine.shared(state_dir):
            return (yield)


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
