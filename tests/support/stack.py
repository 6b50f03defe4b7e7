"""The whole system as `make up` brings it up, driven as a person would: the Makefile's targets, then the tutorial's
final transcript and a scaling drill through the load balancer. The local-process and the Docker end-to-end tests
(tests/test_stack_e2e.py, tests/docker/) share these."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from conversations.refusals import (
    CONVERSATION_EXISTS,
    CONVERSATION_NEEDS_TWO_USERS,
    MISSING_USER_ID,
    NOT_IN_CONVERSATION,
    UNKNOWN_PARTICIPANTS,
)
from tests.support.load_balancer import ClientLoop, ThroughLoadBalancer
from tests.support.processes import REPO_ROOT, free_ports, wait_until
from tests.support.rabbitmq import AMQP_PORT, QueueReader, RabbitVhost

SEED = ["James Blanderphone", "Normalavian Ropetoter", "Flambaravo Chortleblatt"]
# What the worker relays to chat_queue for the transcript's two messages.
TRANSCRIPT_EVENTS = [
    {"type": "new_message", "channel_id": 1, "user_id": 1, "index": 1, "participant_ids": [1, 2]},
    {"type": "new_message", "channel_id": 1, "user_id": 2, "index": 2, "participant_ids": [1, 2]},
]


class Stack(ThroughLoadBalancer):
    """`make up|down|ps|scale|reset-db` with the caller's environment (runtime, ports, state folder)."""

    def __init__(self, env: dict[str, str], lb_port: int):
        self.env = {**os.environ, **env}
        self.lb_port = lb_port

    def make(self, *targets: str, timeout: float = 300) -> str:
        result = subprocess.run(
            ["make", "--no-print-directory", *targets],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert result.returncode == 0, f"make {' '.join(targets)} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout + result.stderr

    def post(self, path: str, body: dict, user: int | None = None) -> tuple[int, dict]:
        headers = {"User-Id": str(user)} if user else {}
        status, raw, _ = self.request("POST", path, body=body, headers=headers)
        return status, json.loads(raw) if raw else {}

    def get(self, path: str) -> tuple[int, Any, dict]:
        """(status, the body as JSON, or as text when it is not JSON, headers)."""
        return self.get_as(path)

    def get_as(self, path: str, user: int | None = None) -> tuple[int, Any, dict]:
        """A GET with `User-Id: user` when given: (status, the body as JSON or text, headers)."""
        status, raw, headers = self.request("GET", path, headers={"User-Id": str(user)} if user else {})
        return status, json.loads(raw) if raw.startswith(b"{") else raw.decode(), headers


class LocalStack(Stack):
    """The local-process runtime with a test's own ports, state folder and database."""

    def __init__(self, state_dir: Path, database: str, **env: str):
        self.state_dir = state_dir
        self.database = database
        self.consul_port, lb_port = free_ports(2)
        self.consul_url = f"http://127.0.0.1:{self.consul_port}"
        super().__init__(
            {
                "MESSENGER_RUNTIME": "local",
                "MESSENGER_STATE_DIR": str(state_dir),
                "MESSENGER_DB_NAME": database,
                "CONSUL_HOST": "127.0.0.1",
                "CONSUL_PORT": str(self.consul_port),
                "LB_PORT": str(lb_port),
                "SHUTDOWN_DRAIN_SECONDS": "2",
                **env,
            },
            lb_port,
        )

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


def run_tutorial_transcript(
    stack: Stack, amqp_port: int = AMQP_PORT, instances: int = 3, amqp_host: str = "127.0.0.1"
) -> None:
    """The seed's final transcript through the load balancer, answered by every instance, both events on chat_queue.

    chat_queue is read on the stack's RabbitMQ at `amqp_host`:`amqp_port` as the notifier declares it, and emptied
    first, so only this transcript's events count.
    """
    reader = QueueReader(RabbitVhost("/"), "chat_queue", port=amqp_port, host=amqp_host)
    try:
        reader.declare()
        reader.purge()
        _transcript(stack, reader, instances)
    finally:
        reader.close()


def _transcript(stack: Stack, reader: QueueReader, instances: int) -> None:
    run_transcript(stack)

    # Responses come from every instance, once the load balancer's list has caught up with
    # Consul's (the watcher renders a moment after an instance passes its check).
    upstreams: set[str] = set()

    def every_instance_answered() -> bool:
        upstreams.add(stack.get("/health")[2]["Upstream-Host"])
        return len(upstreams) >= instances

    wait_until(every_instance_answered, 30, interval=0.05, what=f"answers from {instances} instances")
    assert len(upstreams) == instances, upstreams

    # The worker relayed both new_message events to chat_queue.
    events = reader.wait_for(2, timeout=30)
    assert [json.loads(e.body) for e in events] == TRANSCRIPT_EVENTS
    assert [e.properties.type for e in events] == ["new_message", "new_message"]


def run_transcript(stack: Stack) -> None:
    """The seed's final transcript through the load balancer, on a fresh database: conversation 1, two messages."""
    status, body, headers = stack.get("/health")
    # The whole answer when it is not the tutorial's: which instance (and which of its ports) gave it.
    assert (status, body) == (200, "OK"), (status, body, headers)
    status, body = stack.post("/conversations", {"participant_ids": [1, 2]})
    assert status == 201 and body["conversation"]["id"] == 1
    status, first = stack.post("/conversations/1/messages", {"content": "This is the first message"}, user=1)
    assert status == 201
    assert {k: first["message"][k] for k in ("id", "content", "index", "user_id", "username", "conversation_id")} == {
        "id": 1,
        "content": "This is the first message",
        "index": 1,
        "user_id": 1,
        "username": SEED[0],
        "conversation_id": 1,
    }
    status, second = stack.post("/conversations/1/messages", {"content": "This is the second message"}, user=2)
    assert status == 201
    assert (second["message"]["index"], second["message"]["username"]) == (2, SEED[1])
    status, listing, _ = stack.get("/conversations/1/messages")
    assert status == 200
    assert [
        (m["id"], m["content"], m["user_id"], m["channel_id"], m["index"], m["username"]) for m in listing["messages"]
    ] == [
        (1, "This is the first message", 1, 1, 1, SEED[0]),
        (2, "This is the second message", 2, 1, 2, SEED[1]),
    ]
    status, _, _ = stack.request("POST", "/conversations/1/view_horizon", body={"index": 2}, headers={"User-Id": "1"})
    assert status == 204


def run_contract_cases(stack: Stack) -> None:
    """Every route of the contract (CONTRACT.md section 1) and each of its refusals through the load balancer, as
    the reference service's own test cases ask them, on a database that may already hold anything: the seed's
    users with the tutorial's conversation, and whatever a drill posted. A drill calls it once the system has
    recovered, to show that every route, not only the post the drill measured, answers as it should.
    """
    assert stack.get("/health")[:2] == (200, "OK")
    for ids in ([1, 1], [1, 2, 3], [1]):  # duplicate, more than two, fewer than two
        assert stack.post("/conversations", {"participant_ids": ids}) == (400, {"error": CONVERSATION_NEEDS_TWO_USERS})
    assert stack.post("/conversations", {"participant_ids": [1, 999_999]}) == (400, {"error": UNKNOWN_PARTICIPANTS})
    # A pair's conversation is created once (201 the first time this database sees the pair), then refused with its id.
    created_status, created = stack.post("/conversations", {"participant_ids": [2, 3]})
    status, refused = stack.post("/conversations", {"participant_ids": [3, 2]})
    pair_id = int(refused["error"].rsplit(" ", 1)[1])
    assert (status, refused) == (400, {"error": CONVERSATION_EXISTS.format(conversation_id=pair_id)})
    if created_status == 201:  # this database's first conversation of the pair: the one now refused
        assert set(created["conversation"]) >= {"id", "inserted_at"} and created["conversation"]["id"] == pair_id
    else:
        assert (created_status, created) == (400, {"error": CONVERSATION_EXISTS.format(conversation_id=pair_id)})

    # The list, named for the other participant.
    status, listing, _ = stack.get_as("/conversations", user=2)
    assert status == 200 and {"id": pair_id, "name": SEED[2]} in [
        {"id": c["id"], "name": c["name"]} for c in listing["conversations"]
    ], listing
    assert stack.get_as("/conversations")[:2] == (400, {"error": MISSING_USER_ID})

    # Two posts: increasing indexes, the poster's name; the page holds both, ascending by index.
    path = f"/conversations/{pair_id}/messages"
    status, first = stack.post(path, {"content": "Clambering over rocks"}, user=2)
    assert status == 201 and first["message"]["username"] == SEED[1], first
    status, second = stack.post(path, {"content": "Picnic on a blustery day"}, user=3)
    assert status == 201 and second["message"]["index"] == first["message"]["index"] + 1, second
    assert set(second["message"]) == {"id", "content", "index", "user_id", "username", "conversation_id", "inserted_at"}
    status, page, _ = stack.get(f"{path}?after_index={first['message']['index'] - 1}")
    assert status == 200 and [(m["index"], m["content"]) for m in page["messages"]][:2] == [
        (first["message"]["index"], "Clambering over rocks"),
        (second["message"]["index"], "Picnic on a blustery day"),
    ], page
    assert stack.post(path, {"content": "not mine to post"}, user=1) == (
        400,
        {"error": NOT_IN_CONVERSATION.format(user_id=1)},
    )
    assert stack.post(path, {"content": "who am I"}) == (400, {"error": MISSING_USER_ID})

    # The view horizon.
    horizon = f"/conversations/{pair_id}/view_horizon"
    assert stack.request("POST", horizon, body={"index": 12}, headers={"User-Id": "2"})[0] == 204
    assert stack.post(horizon, {"index": 12}) == (400, {"error": MISSING_USER_ID})

    # Bad input is a 4xx with the error shape, never a 500; no path redirects.
    status, raw, _ = stack.request("POST", path, body={"content": "x" * 200_000}, headers={"User-Id": "2"})
    assert status == 413 and "error" in json.loads(raw), raw[:200]
    status, raw, _ = stack.request("POST", "/conversations", body=b'{"participant_ids": [1,')
    assert status == 400 and "error" in json.loads(raw), raw[:200]
    assert stack.request("GET", "/conversations/", headers={"User-Id": "1"})[0] not in (301, 302, 307, 308)
    # Nothing refused was stored: the pair's conversation still ends at the second post.
    status, page, _ = stack.get(f"{path}?after_index={second['message']['index'] - 1}")
    assert [m["content"] for m in page["messages"]] == ["Picnic on a blustery day"], page


def scale_to_five_and_back_under_load(stack: Stack) -> ClientLoop:
    """`make scale N=5`, then `N=3`, under a steady bounded client loop on conversation 1; the finished loop.

    The loop's time bound outlasts the drill's own waits (two scales of about 20-60 s each under the parallel
    suite, each instance now starting its live listener too, and three 30 s waits): a loop that stopped by its bound
    before the scale-down would read as traffic that stopped. Its count bound likewise: 30,000 requests were
    spent in about 100 s on a quiet machine, before the drill was done.
    """
    with ClientLoop(stack, conversation_id=1, user_id=1, threads=4, max_requests=200000, max_seconds=300) as load:
        wait_until(lambda: load.count() >= 20, 30, what="load running")
        scaled_up = stack.make("scale", "N=5")
        assert scaled_up.count(" passing ") == 5, scaled_up
        wait_until(
            lambda: len({o.upstream for o in load.outcomes[-60:] if o.upstream}) == 5,
            30,
            what="traffic on all five instances",
        )
        scaled_down = stack.make("scale", "N=3")
        assert scaled_down.count(" passing ") == 3, scaled_down
        settled = load.count()
        wait_until(lambda: load.count() >= settled + 20, 30, what="load continuing after scale-down")
    assert load.count() >= 60
    assert load.failures() == []
    return load
