"""Live delivery as a client meets it through the load balancer: long-polls and event streams.

The live tests' topology (tests/test_live.py) and the whole stack `make up` brings up
(tests/test_stack_e2e.py) run the same cases (`run_live_cases`): issue 21's "done when".
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from pathlib import Path

from tests.support.load_balancer import ThroughLoadBalancer
from tests.support.processes import http_get

POSTERS, POSTS_EACH = 4, 50


def get(host: str, port: int, path: str, headers: dict | None = None, timeout: float = 45) -> tuple[int, bytes, float]:
    """One GET on a new connection: (status, body, seconds it took)."""
    started = time.monotonic()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read(), time.monotonic() - started
    finally:
        conn.close()


def established_to(addresses: list[tuple[str, int]]) -> int:
    """Connections to these listeners, as the kernel counts them (ESTABLISHED): the waiters they hold."""
    locals_ = {f"{socket.inet_aton(a)[::-1].hex().upper()}:{p:04X}" for a, p in addresses}
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for row in rows if row.split()[1] in locals_ and row.split()[3] == "01")


def live_addresses(system: ThroughLoadBalancer) -> list[tuple[str, int]]:
    """Each passing instance's live listener, as its Consul entry advertises it (`live_port` in its meta)."""
    status, body, _ = http_get(f"{system.consul_url}/v1/health/service/messenger?passing=true", timeout=5)
    assert status == 200, body
    return sorted((e["Service"]["Address"], int(e["Service"]["Meta"]["live_port"])) for e in json.loads(body))


def new_user(system: ThroughLoadBalancer) -> int:
    status, body, _ = system.request("POST", "/users", {"name": f"live {time.monotonic_ns()}"})
    assert status == 201, body
    return json.loads(body)["user"]["id"]


def new_conversation(system: ThroughLoadBalancer, user: int | None = None) -> int:
    """A fresh conversation between seed user 1 and `user` (a new user if none), through the load balancer."""
    participants = [1, user or new_user(system)]
    status, body, _ = system.request("POST", "/conversations", {"participant_ids": participants})
    assert status == 201, body
    return json.loads(body)["conversation"]["id"]


def post(system: ThroughLoadBalancer, conversation: int, content: str, user: int = 1) -> dict:
    status, body, _ = system.request(
        "POST", f"/conversations/{conversation}/messages", {"content": content}, {"User-Id": str(user)}
    )
    assert status == 201, body
    return json.loads(body)["message"]


class Waiter(threading.Thread):
    """Long-polls one conversation from `after_index` 0 until it holds `expected` messages (bounded in time)."""

    def __init__(self, address: tuple[str, int], conversation: int, expected: int, deadline: float):
        super().__init__(daemon=True)
        self.address, self.conversation, self.expected, self.deadline = address, conversation, expected, deadline
        self.indexes: list[int] = []
        self.problems: list[str] = []

    def run(self) -> None:
        while len(self.indexes) < self.expected and time.monotonic() < self.deadline:
            after = self.indexes[-1] if self.indexes else 0
            path = f"/conversations/{self.conversation}/messages?after_index={after}&wait=10"
            status, body, _ = get(*self.address, path)
            if status != 200:
                self.problems.append(f"{status} {body[:200]!r}")
                return
            self.indexes += [m["index"] for m in json.loads(body)["messages"]]


def read_events(sock_file, count: int) -> list[tuple[int, dict]]:
    """The next `count` message events of an SSE stream (comments and `retry:` skipped)."""
    events: list[tuple[int, dict]] = []
    event_id: int | None = None
    data: dict = {}
    while len(events) < count:
        line = sock_file.readline()
        assert line, "the stream ended early"
        line = line.rstrip(b"\r\n")
        if line.startswith(b"id: "):
            event_id = int(line[4:])
        elif line.startswith(b"data: "):
            data = json.loads(line[6:])
        elif line == b"" and event_id is not None:
            events.append((event_id, data))
            event_id, data = None, {}
    return events


def open_stream(port: int, path: str, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    assert response.status == 200, response.read()
    assert response.getheader("Content-Type") == "text/event-stream; charset=utf-8"
    return conn, response


def every_post_reaches_waiters_on_every_instance(system: ThroughLoadBalancer, conversation: int) -> None:
    """200 posts from 4 clients through the load balancer reach a waiter on each instance's live listener and
    one through the load balancer: 1..200 each, in order, with no gap and no repeat."""
    total = POSTERS * POSTS_EACH
    deadline = time.monotonic() + 120
    addresses = live_addresses(system)
    assert len(addresses) >= 2, addresses
    waiters = [Waiter(address, conversation, total, deadline) for address in addresses]
    waiters.append(Waiter(("127.0.0.1", system.lb_port), conversation, total, deadline))
    for waiter in waiters:
        waiter.start()

    def poster(n: int) -> None:
        for i in range(POSTS_EACH):
            post(system, conversation, f"client {n} message {i}")

    posters = [threading.Thread(target=poster, args=(n,)) for n in range(POSTERS)]
    for thread in posters:
        thread.start()
    for thread in [*posters, *waiters]:
        thread.join(timeout=max(1.0, deadline - time.monotonic()))
    for waiter in waiters:
        assert waiter.problems == [], f"waiter at {waiter.address}"
        assert waiter.indexes == list(range(1, total + 1)), f"waiter at {waiter.address}"


def a_wait_that_expires_answers_an_empty_page(system: ThroughLoadBalancer, conversation: int) -> None:
    post(system, conversation, "before the wait")
    after = post(system, conversation, "the last one")["index"]
    status, body, seconds = get(
        "127.0.0.1", system.lb_port, f"/conversations/{conversation}/messages?after_index={after}&wait=2"
    )
    assert (status, body) == (200, b'{"messages":[]}')
    # It waited, and ended by its own 2 s rather than the longest wait (30 s). The 2 s ±1 is a timing goal,
    # measured by make bench (bench/live.py, 50 such waits at once): here, sharing two cores with the rest of the
    # suite, the answer once came 5 s after the question.
    assert 1 <= seconds < 15


def a_stream_that_reconnects_with_last_event_id_misses_nothing(system: ThroughLoadBalancer, conversation: int) -> None:
    """Three messages, one while connected, four while away (through every instance): after the reconnect with
    Last-Event-ID, exactly the four, and 1..8 in all."""
    first = [post(system, conversation, f"first {i}") for i in range(3)]
    conn, stream = open_stream(system.lb_port, f"/conversations/{conversation}/stream")
    events = read_events(stream, 3)
    assert [(i, e["content"]) for i, e in events] == [(m["index"], m["content"]) for m in first]
    live = post(system, conversation, "while connected")
    events += read_events(stream, 1)
    assert events[-1] == (live["index"], events[-1][1]) and events[-1][1]["content"] == "while connected"
    conn.close()  # the connection drops; meanwhile more is posted, through every instance
    missed = [post(system, conversation, f"while away {i}") for i in range(4)]
    conn, stream = open_stream(
        system.lb_port, f"/conversations/{conversation}/stream", {"Last-Event-ID": str(events[-1][0])}
    )
    resumed = read_events(stream, 4)
    conn.close()
    assert [i for i, _ in resumed] == [m["index"] for m in missed]
    assert [i for i, _ in events + resumed] == list(range(1, 9))


def run_live_cases(system: ThroughLoadBalancer) -> None:
    """Issue 21's cases through the load balancer, each on a conversation of its own."""
    every_post_reaches_waiters_on_every_instance(system, new_conversation(system))
    a_wait_that_expires_answers_an_empty_page(system, new_conversation(system))
    a_stream_that_reconnects_with_last_event_id_misses_nothing(system, new_conversation(system))
