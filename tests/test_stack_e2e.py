"""The whole system as `make up` runs it, end to end: the tutorial's final transcript through port 8085's
stand-in, spread over three instances, events on chat_queue, live delivery, scaling under load, and `make down`.

Runs the real Makefile targets in the local-process runtime (tests/docker/ runs the Docker one): a Consul agent,
this machine's PostgreSQL and RabbitMQ, the migrator job, three gunicorn instances, the Celery worker
and NGINX. Ports and the state folder are the test's own, so nothing collides with a stack a
developer keeps running.
"""

from __future__ import annotations

import os
import subprocess

import psycopg
import pytest

from tests.support.infrastructure import fresh_database
from tests.support.live import run_live_cases
from tests.support.processes import REPO_ROOT, port_open
from tests.support.stack import (
    SEED,
    LocalStack,
    run_contract_cases,
    run_tutorial_transcript,
    scale_to_five_and_back_under_load,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def stack(tmp_path):
    database = fresh_database(f"{os.environ.get('PGDATABASE', 'messenger')}_stack")  # make up creates it
    stack = LocalStack(tmp_path / "state", database)
    try:
        yield stack
    finally:
        subprocess.run(["make", "down"], cwd=REPO_ROOT, env=stack.env, capture_output=True, timeout=180)


def test_make_up_runs_the_tutorial_end_to_end_and_make_down_leaves_nothing(stack):
    up = stack.make("up")
    assert "the stack is up" in up
    assert up.count(" passing ") == 3, up

    run_tutorial_transcript(stack)
    run_contract_cases(stack)  # every route and refusal, once more on a database that now holds data
    run_contract_cases(stack)
    # Live delivery through the load balancer: waiters on every instance, a wait that expires, a stream resumed.
    run_live_cases(stack)

    # Scale to five and back to three under a steady bounded load: no request fails.
    scale_to_five_and_back_under_load(stack)
    stored = {
        row[0]
        for row in psycopg.connect(host="127.0.0.1", user="postgres", dbname=stack.database)
        .execute("SELECT index FROM messages WHERE channel_id = 1")
        .fetchall()
    }
    assert stored == set(range(1, len(stored) + 1)), "indexes stay contiguous under scaling"

    # make up again changes nothing (it is safe to run twice).
    again = stack.make("up")
    assert "already running" in again and again.count(" passing ") == 3

    stack.make("down")
    assert not port_open(stack.lb_port) and not port_open(stack.consul_port)
    assert stack.processes() == []
    assert sorted(p.name for p in stack.state_dir.rglob("*.pid")) == []


def test_make_reset_db_empties_and_reseeds_through_the_migrator(stack):
    stack.make("up")
    stack.post("/conversations", {"participant_ids": [1, 3]})
    stack.make("reset-db")
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname=stack.database) as conn:
        assert conn.execute("SELECT count(*) FROM channels").fetchone() == (0,)
        assert conn.execute("SELECT id, name FROM users ORDER BY id").fetchall() == list(enumerate(SEED, start=1))
    status, body = stack.post("/conversations", {"participant_ids": [1, 2]})
    assert (status, body["conversation"]["id"]) == (201, 1)
