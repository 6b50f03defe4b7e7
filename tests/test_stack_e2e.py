"""The whole system as `make up` runs it, end to end: the tutorial's final transcript through port 8085's
stand-in, spread over three instances, events on chat_queue, scaling under load, and `make down`.

Runs the real Makefile targets in the local-process runtime (no Docker engine here): a Consul agent,
this machine's PostgreSQL and RabbitMQ, the migrator job, three gunicorn instances, the Celery worker
and NGINX. Ports and the state folder are the test's own, so nothing collides with a stack a
developer keeps running.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import psycopg
import pytest

from tests.support.load_balancer import ClientLoop, Topology
from tests.support.processes import REPO_ROOT, free_port, port_open, wait_until
from tests.support.rabbitmq import QueueReader, RabbitVhost

pytestmark = pytest.mark.slow

SEED = ["James Blanderphone", "Normalavian Ropetoter", "Flambaravo Chortleblatt"]


class Stack:
    """`make up|down|ps|scale|reset-db` with this test's ports, state folder and database."""

    request = Topology.request  # one request through the load balancer on a new connection

    def __init__(self, state_dir: Path, database: str):
        self.state_dir = state_dir
        self.database = database
        self.lb_port = free_port()
        self.consul_port = free_port()
        self.env = {
            **os.environ,
            "MESSENGER_RUNTIME": "local",
            "MESSENGER_STATE_DIR": str(state_dir),
            "MESSENGER_DB_NAME": database,
            "CONSUL_HOST": "127.0.0.1",
            "CONSUL_PORT": str(self.consul_port),
            "LB_PORT": str(self.lb_port),
            "SHUTDOWN_DRAIN_SECONDS": "2",
        }

    def make(self, *targets: str, timeout: float = 300) -> str:
        result = subprocess.run(["make", "--no-print-directory", *targets], cwd=REPO_ROOT, env=self.env,
                                capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"make {' '.join(targets)} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout + result.stderr

    def post(self, path: str, body: dict, user: int | None = None) -> tuple[int, dict]:
        headers = {"User-Id": str(user)} if user else {}
        status, raw, _ = self.request("POST", path, body=body, headers=headers)
        return status, json.loads(raw) if raw else {}

    def get(self, path: str) -> tuple[int, dict, dict]:
        status, raw, headers = self.request("GET", path)
        return status, json.loads(raw) if raw.startswith(b"{") else raw.decode(), headers

    def processes(self) -> list[str]:
        """Command lines of live processes that belong to this stack."""
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                environ = (proc / "environ").read_bytes()
            except OSError:
                continue
            if str(self.state_dir) in cmdline or f"CONSUL_PORT={self.consul_port}".encode() in environ:
                found.append(cmdline)
        return found


@pytest.fixture
def stack(tmp_path):
    database = f"{os.environ.get('PGDATABASE', 'messenger')}_stack"
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    stack = Stack(tmp_path / "state", database)
    try:
        yield stack
    finally:
        subprocess.run(["make", "down"], cwd=REPO_ROOT, env=stack.env, capture_output=True, timeout=180)


def test_make_up_runs_the_tutorial_end_to_end_and_make_down_leaves_nothing(stack):
    up = stack.make("up")
    assert "the stack is up" in up
    assert up.count(" passing ") == 3, up

    # The notifier's queue, read as the notifier declares it; emptied first so only this run's events count.
    reader = QueueReader(RabbitVhost("/"), "chat_queue")
    reader.declare()
    reader.purge()
    try:
        # The seed's final transcript, through the load balancer.
        assert stack.get("/health")[:2] == (200, "OK")
        status, body = stack.post("/conversations", {"participant_ids": [1, 2]})
        assert status == 201 and body["conversation"]["id"] == 1
        status, first = stack.post("/conversations/1/messages", {"content": "This is the first message"}, user=1)
        assert status == 201
        assert {k: first["message"][k] for k in ("id", "content", "index", "user_id", "username", "conversation_id")} == {
            "id": 1, "content": "This is the first message", "index": 1, "user_id": 1,
            "username": SEED[0], "conversation_id": 1}
        status, second = stack.post("/conversations/1/messages", {"content": "This is the second message"}, user=2)
        assert status == 201
        assert (second["message"]["index"], second["message"]["username"]) == (2, SEED[1])
        status, listing, _ = stack.get("/conversations/1/messages")
        assert status == 200
        assert [(m["id"], m["content"], m["user_id"], m["channel_id"], m["index"], m["username"])
                for m in listing["messages"]] == [
            (1, "This is the first message", 1, 1, 1, SEED[0]),
            (2, "This is the second message", 2, 1, 2, SEED[1]),
        ]
        status, _, _ = stack.request("POST", "/conversations/1/view_horizon", body={"index": 2},
                                     headers={"User-Id": "1"})
        assert status == 204

        # Responses come from all three instances.
        upstreams = {stack.get("/health")[2]["Upstream-Host"] for _ in range(30)}
        assert len(upstreams) == 3

        # The worker relayed both new_message events to chat_queue.
        events = reader.wait_for(2, timeout=30)
        assert [json.loads(e.body) for e in events] == [
            {"type": "new_message", "channel_id": 1, "user_id": 1, "index": 1, "participant_ids": [1, 2]},
            {"type": "new_message", "channel_id": 1, "user_id": 2, "index": 2, "participant_ids": [1, 2]},
        ]
        assert [e.properties.type for e in events] == ["new_message", "new_message"]
    finally:
        reader.close()

    # Scale to five and back to three under a steady bounded load: no request fails.
    with ClientLoop(stack, conversation_id=1, user_id=1, threads=4, max_requests=30000, max_seconds=120) as load:
        wait_until(lambda: load.count() >= 20, 30, what="load running")
        scaled_up = stack.make("scale", "N=5")
        assert scaled_up.count(" passing ") == 5, scaled_up
        wait_until(lambda: len({o.upstream for o in load.outcomes[-60:] if o.upstream}) == 5, 30,
                   what="traffic on all five instances")
        scaled_down = stack.make("scale", "N=3")
        assert scaled_down.count(" passing ") == 3, scaled_down
        settled = load.count()
        wait_until(lambda: load.count() >= settled + 20, 30, what="load continuing after scale-down")
    assert load.count() >= 60
    assert load.failures() == []
    stored = {row[0] for row in psycopg.connect(host="127.0.0.1", user="postgres", dbname=stack.database)
              .execute("SELECT index FROM messages WHERE channel_id = 1").fetchall()}
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
