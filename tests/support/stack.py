"""The whole system as `make up` runs it, driven by tests: the real Makefile targets with a test's own
ports, state folder and database, and the tutorial's final transcript through the load balancer.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.support.load_balancer import Topology
from tests.support.processes import REPO_ROOT, free_port

SEED = ["James Blanderphone", "Normalavian Ropetoter", "Flambaravo Chortleblatt"]
# What the worker relays to chat_queue for the transcript's two messages.
TRANSCRIPT_EVENTS = [
    {"type": "new_message", "channel_id": 1, "user_id": 1, "index": 1, "participant_ids": [1, 2]},
    {"type": "new_message", "channel_id": 1, "user_id": 2, "index": 2, "participant_ids": [1, 2]},
]


class Stack:
    """`make up|down|ps|scale|reset-db` with this test's ports, state folder and database."""

    request = Topology.request  # one request through the load balancer on a new connection

    def __init__(self, state_dir: Path, database: str, **env: str):
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
            **env,
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


def run_transcript(stack: Stack) -> None:
    """The seed's final transcript through the load balancer, on a fresh database: conversation 1, two messages."""
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
