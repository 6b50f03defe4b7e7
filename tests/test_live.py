"""Live delivery through the load balancer: long-polls and event streams on real instances.

A topology of this module's own (tests.support.load_balancer.Topology): Consul,
two instances started by infrastructure/messenger-deploy.sh (each a WSGI
gunicorn and its live listener, conversations/live), and NGINX on a free port,
routing `?wait=` and `/stream` to the live listeners by the `live_port` each
instance advertises in Consul.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from conversations.refusals import MISSING_USER_ID, NOT_IN_CONVERSATION
from tests.support.live import (
    a_stream_that_reconnects_with_last_event_id_misses_nothing,
    a_wait_that_expires_answers_an_empty_page,
    established_to,
    every_post_reaches_waiters_on_every_instance,
    get,
    live_addresses,
    new_conversation,
    new_user,
    post,
)
from tests.support.load_balancer import Topology, alive
from tests.support.processes import REPO_ROOT, is_live_listener, wait_until

pytestmark = pytest.mark.slow

WAITERS = 1000


@pytest.fixture(scope="module")
def topology():
    state_dir = Path(tempfile.mkdtemp(prefix="messenger-live-state-"))
    topology = Topology(state_dir, database=f"{os.environ['PGDATABASE']}_live_instances")
    try:
        topology.start()
        topology.ensure_instances(2)
        yield topology
    finally:
        topology.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
def conversation(topology):
    """A fresh conversation between a new user and seed user 1."""
    return new_conversation(topology)


def test_waiters_on_every_instance_get_each_message_posted_through_the_load_balancer_once_in_order(
    topology, conversation
):
    """200 posts from 4 clients through NGINX reach a waiter on each instance and one through NGINX: 1..200 exactly."""
    assert len(live_addresses(topology)) == 2
    every_post_reaches_waiters_on_every_instance(topology, conversation)


def test_a_wait_that_expires_answers_an_empty_page_after_its_seconds(topology, conversation):
    a_wait_that_expires_answers_an_empty_page(topology, conversation)


def test_a_page_with_messages_answers_at_once_and_without_wait_exactly_as_the_ordinary_route(topology, conversation):
    """`wait` changes nothing when there is something to answer: the same bytes as the ordinary page."""
    post(topology, conversation, "already here")
    ordinary = topology.request("GET", f"/conversations/{conversation}/messages")
    waited = topology.request("GET", f"/conversations/{conversation}/messages?wait=30")
    assert ordinary[0] == waited[0] == 200
    assert waited[1] == ordinary[1]


def test_refusals_come_before_any_wait(topology, conversation):
    """Unknown conversation, unknown User-Id and a bad `wait` are refused at once, in the contract's shape."""
    cases = [
        ("/conversations/999999/messages?wait=30", {}, 404, "Conversation with id 999999 not found"),
        (f"/conversations/{conversation}/messages?wait=30", {"User-Id": "999999"}, 400, None),
        (f"/conversations/{conversation}/messages?wait=31", {}, 400, "wait must be an integer from 0 to 30"),
        (f"/conversations/{conversation}/messages?wait=soon", {}, 400, "wait must be an integer from 0 to 30"),
        ("/conversations/999999/stream", {}, 404, "Conversation with id 999999 not found"),
    ]
    for path, headers, status, error in cases:
        answer, body, seconds = get("127.0.0.1", topology.lb_port, path, headers)
        assert answer == status, (path, body)
        assert seconds < 5, path
        text = json.loads(body)["error"]
        assert text == error if error else text.startswith("User-Id header names no known user"), (path, body)


def test_an_event_stream_reconnecting_with_last_event_id_misses_nothing_and_repeats_nothing(topology, conversation):
    a_stream_that_reconnects_with_last_event_id_misses_nothing(topology, conversation)


def _held_waiters(port: int, path: str, count: int) -> list[socket.socket]:
    """`count` long-polls sent on their own connections, left unanswered."""
    sockets = []
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(request)
        sockets.append(sock)
    return sockets


def _answer_of(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    sock.close()
    return b"".join(chunks)


def test_a_thousand_held_waiters_do_not_stop_ordinary_requests_and_all_get_the_next_message(topology, conversation):
    topology.ensure_instances(1)
    try:
        held = _held_waiters(topology.lb_port, f"/conversations/{conversation}/messages?wait=30", WAITERS)
        # Every waiter reached the instance's live listener and waits there (none answered yet).
        live = live_addresses(topology)
        wait_until(lambda: established_to(live) >= WAITERS, 30, what=f"{WAITERS} waiters held by the instance")
        for _ in range(50):  # the ordinary routes are served while they wait
            status, body, _ = topology.request("GET", f"/conversations/{conversation}/messages")
            assert (status, body) == (200, b'{"messages":[]}')
        assert topology.request("GET", "/health")[0] == 200
        message = post(topology, conversation, "to a thousand waiters")
        answers = [_answer_of(sock) for sock in held]
        assert all(answer.startswith(b"HTTP/1.1 200 ") for answer in answers)
        bodies = [json.loads(answer.split(b"\r\n\r\n", 1)[1]) for answer in answers]
        assert all([m["id"] for m in body["messages"]] == [message["id"]] for body in bodies)
    finally:
        topology.ensure_instances(2)


def test_members_only_rules_hold_for_waiters_through_the_load_balancer(topology):
    """Instances deployed with READS_REQUIRE_MEMBER on: a long-poll without User-Id or from an outsider, and an
    outsider's stream, are refused at once through NGINX; a participant waiting on each instance gets the message
    the other participant posts through NGINX meanwhile."""
    member, outsider = new_user(topology), new_user(topology)
    conversation = new_conversation(topology, member)
    topology.stop_instance()  # all of them: every instance behind NGINX reads members only
    members_only = [topology.infra.deploy(READS_REQUIRE_MEMBER="true") for _ in range(2)]
    try:
        topology.wait_routed({topology.address(i) for i in members_only})
        page = f"/conversations/{conversation}/messages?wait=30"
        cases = [
            (page, {}, MISSING_USER_ID),
            (page, {"User-Id": str(outsider)}, NOT_IN_CONVERSATION.format(user_id=outsider)),
            (
                f"/conversations/{conversation}/stream",
                {"User-Id": str(outsider)},
                NOT_IN_CONVERSATION.format(user_id=outsider),
            ),
        ]
        for path, headers, error in cases:
            status, body, seconds = get("127.0.0.1", topology.lb_port, path, headers)
            assert (status, json.loads(body)) == (400, {"error": error}), (path, headers)
            assert seconds < 5, (path, headers)  # refused, not held until the wait's 30 s
        after = post(topology, conversation, "before the members wait")["index"]
        addresses = live_addresses(topology)
        answers: list[tuple[int, bytes, float]] = []
        waiters = [
            threading.Thread(
                target=lambda address=address: answers.append(
                    get(*address, f"{page}&after_index={after}", {"User-Id": str(member)})
                )
            )
            for address in addresses
        ]
        for thread in waiters:
            thread.start()
        wait_until(lambda: established_to(addresses) >= 2, 10, what="both waiters held")
        message = post(topology, conversation, "for members")
        for thread in waiters:
            thread.join(timeout=40)
        assert [(status, [m["id"] for m in json.loads(body)["messages"]]) for status, body, _ in answers] == [
            (200, [message["id"]])
        ] * 2
    finally:
        topology.stop_instance(*members_only)
        topology.ensure_instances(2)


def test_a_waiter_on_a_draining_instance_is_answered_not_cut(topology, conversation):
    """A graceful stop (deregister, drain, SIGTERM) answers the instance's waiters with their empty page."""
    addresses = live_addresses(topology)
    instances = topology.ensure_instances(2)
    results: list[tuple[int, bytes, float]] = []
    waiters = [
        threading.Thread(
            target=lambda address=address: results.append(
                get(*address, f"/conversations/{conversation}/messages?wait=30")
            )
        )
        for address in addresses
    ]
    for thread in waiters:
        thread.start()
    wait_until(lambda: established_to(addresses) >= 2, 10, what="both waiters held")
    topology.stop_instance(*instances)
    for thread in waiters:
        thread.join(timeout=30)
    # Answered by the stop, not cut (a 502 through NGINX, a reset here) after gunicorn's graceful timeout.
    assert [(status, body) for status, body, _ in results] == [(200, b'{"messages":[]}')] * 2
    topology.ensure_instances(2)


# What a WSGI master does with its live listener, in a process of its own: preload the app, bind, then (one
# line on stdin each) fork the live server and stop it.
_LIVE_LISTENER_HOST = """
import sys
from messenger.wsgi import application  # the master's preload
from core import config
from messenger.live_listener import LiveListener

live = LiveListener(config.load())
print(live.port, flush=True)
sys.stdin.readline()
live.start(inherited=[])
print("started", flush=True)
sys.stdin.readline()
live.stop()
"""


def test_a_waiter_queued_while_the_live_listener_starts_is_answered_when_it_stops(topology, conversation):
    """A waiter that connected before the live server served (it queues on the socket the WSGI master
    bound) gets its page from a stop that comes before the server is up, not a reset."""
    database = {"PGHOST": "127.0.0.1", "PGPORT": "5432", "PGUSER": "postgres", "PGDATABASE": topology.database}
    env = {**os.environ, **database, "BIND_HOST": "127.0.0.1", "LOG_LEVEL": "WARNING"}
    env.pop("LIVE_PORT", None)
    host = subprocess.Popen(
        [sys.executable, "-c", _LIVE_LISTENER_HOST],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(host.stdout.readline())
        host.stdin.write("start\n")
        host.stdin.flush()
        assert host.stdout.readline() == "started\n"
        # Sent a moment after the server's process began: it is still starting.
        [held] = _held_waiters(port, f"/conversations/{conversation}/messages?wait=30", 1)
        host.stdin.write("stop\n")
        host.stdin.flush()
        assert host.wait(timeout=60) == 0
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()
    answer = _answer_of(held)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'\r\n\r\n{"messages":[]}'), answer


def _live_server_of(master: int) -> int:
    """The pid of an instance's live server: the child of its WSGI master that runs gunicorn_live_conf.py."""
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return next(int(pid) for pid in children if is_live_listener(int(pid)))


def test_an_instance_whose_live_listener_dies_stops_and_is_started_again_whole(topology, conversation):
    """Its WSGI /health (the Consul check) would go on passing while every read NGINX sends it is refused:
    the master leaves Consul and exits with an error instead, and its supervisor starts the instance again,
    whose live listener then answers the reads."""
    victim = topology.ensure_instances(2)[0]
    master = topology.infra.pid(victim)
    address = topology.address(victim)
    os.kill(_live_server_of(master), signal.SIGKILL)

    wait_until(lambda: not alive(master), 15, what="the instance's master to exit")
    wait_until(lambda: topology.infra.pid(victim) != master, 30, what="supervisord to start the instance again")
    topology.wait_routed({topology.address(i) for i in topology.running_instances()}, 60)
    assert address in topology.passing_addresses()
    post(topology, conversation, "after the listener's loss")
    for host, port in live_addresses(topology):
        status, body, _ = get(host, port, f"/conversations/{conversation}/messages")
        assert status == 200 and [m["content"] for m in json.loads(body)["messages"]] == ["after the listener's loss"]
