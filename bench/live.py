"""`make bench`'s live scenarios: waiters held open through the load balancer (docs/live.md).

Usage: python bench/live.py [--url http://127.0.0.1:8085] [--consul http://127.0.0.1:8500]
                            [--waiters 1000] [--idle 10000] [--rounds 200] [--duration 10]
       python bench/live.py --own-topology [...]

`--own-topology` measures a topology of its own instead of the stack on 8085:
Consul, two instances from the deploy scripts and NGINX, all on free loopback
ports and a database of its own (`<PGDATABASE>_bench_live`), as the live tests
start it (tests/support/load_balancer.py), stopped when the bench ends.

- delivery latency: with `--waiters` idle waiters held on one conversation, a
  waiter on another conversation (through the load balancer) and a post to it
  (through the load balancer, so usually another instance): the time from the
  post's 201 to the waiter's answer, p50 and p99 over `--rounds` posts;
- the ordinary page's rate (wrk, as make bench's page scenario) with no waiter
  and with `--waiters` held;
- make bench's mixed chat scenario (bench/run.py: `--pairs` conversations,
  by default its 200, and CHAT_POST_EVERY - 1 reads to a post) with its
  readers polling, then long-polling, then on event streams, while one client
  posts 10 messages a second across their conversations: the requests and the
  instances' CPU per delivered message, counted over 30 s of steady state (each
  reader's first request, and its last wait cut short, fall outside it);
- the live listener's RSS with 0, `--waiters` and `--idle` idle waiters held on
  one instance, sent straight to its live port (the one Consul advertises):
  the load balancer's own connection limit is not what is measured.

Every loop is bounded (rounds, a deadline per request); waiters are plain
sockets with a request sent, so the client costs no thread per waiter.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(1, str(BENCH_DIR.parent))

from dataset import CHAT_CONVERSATIONS  # noqa: E402
from run import CHAT_POST_EVERY, wrk  # noqa: E402

from messenger.live_listener import PROCESS_NAME as LIVE_PROCESS_NAME  # noqa: E402

WAIT = 30
# A wait that expires answers its empty page within a second of its own seconds (issue 21): measured here, on a
# machine given to the bench, rather than asserted in a test that shares two cores with the rest of the suite.
EXPIRING_WAIT = 2
EXPIRING_WAITERS = 50
# How long the live listeners' CPU is measured while the waiters are held and nothing else is sent.
HELD_CPU_WINDOW = 3.0
# The mixed scenarios: one client posts this many messages a second across the readers' conversations;
# each is measured over MIXED_WINDOW seconds once MIXED_SETTLE seconds have let every reader start.
POSTS_PER_SECOND = 10
MIXED_SETTLE = 5.0
MIXED_WINDOW = 30.0


def request(base: str, method: str, path: str, body: dict | None = None, user: int | None = None) -> tuple[int, dict]:
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=WAIT + 10)
    try:
        headers = {"Content-Type": "application/json", **({"User-Id": str(user)} if user else {})}
        conn.request(method, path, None if body is None else json.dumps(body), headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def new_conversation(base: str) -> tuple[int, int]:
    """A conversation of its own between seed user 1 and a new user: (conversation id, the new user's id)."""
    status, body = request(base, "POST", "/users", {"name": f"bench live {time.time_ns()}"})
    assert status == 201, body
    user = body["user"]["id"]
    status, body = request(base, "POST", "/conversations", {"participant_ids": [1, user]})
    assert status == 201, body
    return body["conversation"]["id"], user


def hold(host: str, port: int, path: str, count: int) -> list[socket.socket]:
    line = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    held = []
    for _ in range(count):
        sock = socket.create_connection((host, port), timeout=10)
        sock.sendall(line)
        held.append(sock)
    return held


def release(held: list[socket.socket]) -> None:
    for sock in held:
        sock.close()


def live_listeners(consul: str) -> list[tuple[str, int]]:
    with urllib.request.urlopen(f"{consul}/v1/health/service/messenger?passing=true", timeout=5) as response:
        entries = json.load(response)
    return sorted(
        (e["Service"]["Address"], int(e["Service"]["Meta"]["live_port"]))
        for e in entries
        if (e["Service"].get("Meta") or {}).get("live_port")
    )


def _listening_inode(port: int) -> str:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":
                return fields[9]
    raise LookupError(f"nothing listens on port {port}")


def live_worker_rss_mib(port: int) -> float:
    """RSS of the process that serves the live port: the gunicorn asgi worker (the newest holder of the socket)."""
    inode = _listening_inode(port)
    holders = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) == f"socket:[{inode}]" for fd in (proc / "fd").iterdir()):
                holders.append(int(proc.name))
        except OSError:
            continue
    worker = max(holders)  # forked after its master
    rss_kib = next(
        int(line.split()[1])
        for line in Path(f"/proc/{worker}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    return rss_kib / 1024


def held_by(port: int, count: int, limit: float = 60) -> None:
    """Until the listener on `port` has accepted `count` connections (the kernel's ESTABLISHED rows), or fail."""
    deadline = time.monotonic() + limit
    suffix = f":{port:04X}"
    while time.monotonic() < deadline:
        rows = [r.split() for t in ("/proc/net/tcp", "/proc/net/tcp6") for r in Path(t).read_text().splitlines()[1:]]
        if sum(1 for r in rows if r[1].endswith(suffix) and r[3] == "01") >= count:
            return
        time.sleep(0.1)
    raise TimeoutError(f"the live listener on {port} did not accept {count} connections in {limit}s")


def settled(database: str, limit: float = 30) -> None:
    """Until the live listeners have taken in what was just sent them (their CPU over half a second
    below 5%), or `limit` seconds: what is measured next is waiters held, not waiters arriving."""
    deadline = time.monotonic() + limit
    last = _instances_cpu_seconds(database)["live"]
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = _instances_cpu_seconds(database)["live"]
        if now - last < 0.025:
            return
        last = now


def _live_cpu_per_second(database: str, seconds: float) -> float:
    """The live listeners' CPU seconds per second over the next `seconds`, with nothing sent meanwhile: what
    holding the waiters costs them. (The page's reads go to the live listeners too, so a figure taken while
    the page is measured would be the reads'.)"""
    before, started = _instances_cpu_seconds(database)["live"], time.monotonic()
    time.sleep(seconds)  # the measuring window itself
    return (_instances_cpu_seconds(database)["live"] - before) / (time.monotonic() - started)


def _receive(base: str, path: str, received: list[float]) -> None:
    request(base, "GET", path)
    received.append(time.monotonic())


def latency(base: str, conversation: int, user: int, rounds: int) -> dict[str, float]:
    """Post→waiter delivery over `rounds` posts: p50 and p99 ms from the post's 201 to the waiter's answer."""
    samples = []
    after = 0
    for n in range(rounds):
        received: list[float] = []
        path = f"/conversations/{conversation}/messages?after_index={after}&wait={WAIT}"
        waiter = threading.Thread(target=_receive, args=(base, path, received))
        waiter.start()
        time.sleep(0.02)  # a benchmark, not a test: give the waiter time to be held before the post
        status, body = request(base, "POST", f"/conversations/{conversation}/messages", {"content": f"ping {n}"}, user)
        created = time.monotonic()
        assert status == 201, body
        after = body["message"]["index"]
        waiter.join(timeout=WAIT + 10)
        if received:
            samples.append(max(0.0, received[0] - created) * 1000)
    samples.sort()
    return {
        "p50_ms": statistics.median(samples),
        "p99_ms": samples[min(len(samples) - 1, int(len(samples) * 0.99))],
        "received": len(samples),
    }


def expiring_waits(base: str, path: str, count: int) -> list[float]:
    """The seconds each of `count` simultaneous waits on a quiet conversation took to answer its empty page."""
    took: list[float] = []

    def one() -> None:
        started = time.monotonic()
        status, body = request(base, "GET", path)
        if (status, body) == (200, {"messages": []}):
            took.append(time.monotonic() - started)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT + 15)
    return took


def _instances_cpu_seconds(database: str) -> dict[str, float]:
    """CPU (user + system) of every gunicorn process serving `database`, by server: "wsgi" (the
    ordinary routes, posts included) and "live" (the live listeners)."""
    total = {"wsgi": 0.0, "live": 0.0}
    tick = os.sysconf("SC_CLK_TCK")
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
            if b"gunicorn" not in cmdline:
                continue
            environ = dict(
                item.split("=", 1) for item in (proc / "environ").read_bytes().decode().split("\0") if "=" in item
            )
            if environ.get("PGDATABASE") != database:
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            # The live listener is forked from the WSGI master (the same command line) and names itself in its comm.
            server = "live" if (proc / "comm").read_bytes().strip() == LIVE_PROCESS_NAME else "wsgi"
            total[server] += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, ValueError):
            continue
    return total


def _follow_stream(base: str, conversation: int, streams: list[socket.socket], delivered_at: list[float]) -> None:
    """One event stream, held until the caller shuts its socket (in `streams`): when each message it
    delivered (each an `id:` line) arrived, appended to `delivered_at`."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=WAIT + 10)
    try:
        conn.request("GET", f"/conversations/{conversation}/stream")
        response = conn.getresponse()
        streams.append(conn.sock)
        while line := response.fp.readline():
            if line.startswith(b"id: "):
                delivered_at.append(time.monotonic())
    except OSError:
        pass  # shut by the caller
    finally:
        conn.close()


def poll_interval(pairs: int) -> float:
    """How often a polling reader asks: each conversation gets a post every pairs / POSTS_PER_SECOND seconds,
    and make bench's mixed scenario has CHAT_POST_EVERY - 1 reads to a post."""
    return pairs / POSTS_PER_SECOND / (CHAT_POST_EVERY - 1)


def mixed(base: str, database: str, pairs: int, window: float, readers_do: str) -> dict[str, float]:
    """make bench's mixed chat workload with `pairs` readers, each following its conversation, while one
    client posts POSTS_PER_SECOND messages a second across their conversations: the requests readers sent,
    the messages they received and the instances' CPU, all counted over `window` seconds of steady state
    (after MIXED_SETTLE seconds in which every reader has sent its first request).

    `readers_do`: "poll" (each reader asks every `poll_interval(pairs)`), "wait" (long-poll), "stream" (one event stream
    each) or "nothing" (no readers: the posts' own CPU)."""
    conversations = [new_conversation(base) for _ in range(pairs)]
    interval = poll_interval(pairs)
    begin = time.monotonic() + MIXED_SETTLE
    end = begin + window
    stop = end + 1
    delivered_at: list[float] = []
    requested_at: list[float] = []
    streams: list[socket.socket] = []

    def reader(n: int) -> None:
        conversation, _ = conversations[n]
        if readers_do == "stream":
            requested_at.append(time.monotonic())
            _follow_stream(base, conversation, streams, delivered_at)
            return
        after = 0
        # Polling clients opened at different moments: spread over one interval, not all at once.
        next_poll = time.monotonic() + random.uniform(0, interval)
        while time.monotonic() < stop:
            if readers_do == "poll":
                time.sleep(max(0.0, next_poll - time.monotonic()))  # the polling client's interval
                next_poll += interval
            wait = f"&wait={min(WAIT, max(1, int(stop - time.monotonic())))}" if readers_do == "wait" else ""
            requested_at.append(time.monotonic())
            _, body = request(base, "GET", f"/conversations/{conversation}/messages?after_index={after}{wait}")
            if body["messages"]:
                received = time.monotonic()
                delivered_at.extend([received] * len(body["messages"]))
                after = body["messages"][-1]["index"]

    readers = [threading.Thread(target=reader, args=(n,)) for n in range(pairs if readers_do != "nothing" else 0)]
    for thread in readers:
        thread.start()
    posts_at: list[float] = []
    cpu_begin = cpu_end = None
    next_post = time.monotonic()
    while (now := time.monotonic()) < stop - 1:
        if cpu_begin is None and now >= begin:
            cpu_begin = _instances_cpu_seconds(database)
        if cpu_end is None and now >= end:
            cpu_end = _instances_cpu_seconds(database)
        conversation, user = conversations[len(posts_at) % pairs]
        request(base, "POST", f"/conversations/{conversation}/messages", {"content": f"mixed {len(posts_at)}"}, user)
        posts_at.append(time.monotonic())
        next_post += 1 / POSTS_PER_SECOND
        time.sleep(max(0.0, next_post - time.monotonic()))  # the posting client's rate
    cpu_end = cpu_end or _instances_cpu_seconds(database)
    time.sleep(max(0.0, stop - time.monotonic()))  # the readers' last waits end at `stop`
    for sock in list(streams):
        sock.shutdown(socket.SHUT_RDWR)
    for thread in readers:
        thread.join(timeout=WAIT + 10)
    assert cpu_begin is not None
    cpu = {server: cpu_end[server] - cpu_begin[server] for server in cpu_end}

    def within(times: list[float]) -> int:
        return sum(begin <= t < end for t in times)

    return {
        "posts": within(posts_at),
        "delivered": within(delivered_at),
        "requests": within(requested_at),
        "all_posts": len(posts_at),
        "all_delivered": len(delivered_at),
        **cpu,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8085")
    parser.add_argument("--consul", default=f"http://127.0.0.1:{os.environ.get('CONSUL_PORT', '8500')}")
    parser.add_argument("--waiters", type=int, default=1000)
    parser.add_argument("--idle", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--page-rounds", type=int, default=3, help="interleaved page runs without and with waiters")
    parser.add_argument("--pairs", type=int, default=CHAT_CONVERSATIONS, help="readers in the mixed scenarios")
    parser.add_argument("--database", default=os.environ.get("PGDATABASE", "messenger"), help="the stack's database")
    parser.add_argument("--own-topology", action="store_true", help="start Consul, 2 instances and NGINX on free ports")
    args = parser.parse_args()
    if not args.own_topology:
        return measure(args)
    from tests.support.infrastructure import drop_created_databases
    from tests.support.load_balancer import Topology

    state_dir = Path(tempfile.mkdtemp(prefix="messenger-bench-live-"))
    topology = Topology(state_dir, database=f"{os.environ.get('PGDATABASE', 'messenger')}_bench_live")
    try:
        topology.start()
        topology.ensure_instances(2)
        args.url, args.consul, args.database = topology.lb_url, topology.consul.url, topology.database
        return measure(args)
    finally:
        topology.stop()
        drop_created_databases()
        shutil.rmtree(state_dir, ignore_errors=True)


def measure(args: argparse.Namespace) -> int:
    lb = urlsplit(args.url)
    idle_conversation, _ = new_conversation(args.url)
    conversation, user = new_conversation(args.url)
    request(args.url, "POST", f"/conversations/{idle_conversation}/messages", {"content": "seen"}, 1)
    idle_path = f"/conversations/{idle_conversation}/messages?after_index=1&wait={WAIT}"
    page_env = {"BENCH_PATH": f"/conversations/{idle_conversation}/messages", "BENCH_USER": "1"}

    rows = []
    # The page's rate with and without held waiters, interleaved: on a shared machine the
    # load of the moment moves both alike, where one run of each would compare two moments.
    quiet, busy, idle_cpu = [], [], []
    for last in [False] * (args.page_rounds - 1) + [True]:
        quiet.append(wrk(args.url, "get_path.lua", 16, args.duration, page_env))
        held = hold(lb.hostname, lb.port, idle_path, args.waiters)
        try:
            settled(args.database)
            idle_cpu.append(_live_cpu_per_second(args.database, HELD_CPU_WINDOW))
            busy.append(wrk(args.url, "get_path.lua", 16, args.duration, page_env))
            if last:
                delivered = latency(args.url, conversation, user, args.rounds)
        finally:
            release(held)
    quiet_rps, busy_rps = (sum(run["rps"] for run in runs) / len(runs) for runs in (quiet, busy))
    each = ", ".join(f"{b['rps'] / q['rps']:.0%}" for q, b in zip(quiet, busy, strict=True))
    rows.append(("page, no waiter", f"{quiet_rps:.0f} req/s", f"{sum(r['errors'] for r in quiet)} errors"))
    rows.append(
        (
            f"page, {args.waiters} waiters held",
            f"{busy_rps:.0f} req/s ({busy_rps / quiet_rps:.0%}; each round {each})",
            f"{sum(r['errors'] for r in busy)} errors",
        )
    )
    rows.append(
        (
            f"live listeners' CPU while {args.waiters} waiters are held, nothing else sent",
            f"{1000 * sum(idle_cpu) / len(idle_cpu):.1f} ms a second",
            "both instances",
        )
    )
    rows.append(
        (
            f"post → waiter, {args.waiters} waiters held",
            f"p50 {delivered['p50_ms']:.1f} ms, p99 {delivered['p99_ms']:.1f} ms",
            f"{delivered['received']}/{args.rounds} received",
        )
    )

    expiring_path = f"/conversations/{idle_conversation}/messages?after_index=1&wait={EXPIRING_WAIT}"
    expired = sorted(expiring_waits(args.url, expiring_path, EXPIRING_WAITERS))
    expired_figure = (
        f"{expired[0]:.2f}-{expired[-1]:.2f} s, {len(expired)}/{EXPIRING_WAITERS} empty pages" if expired else "none"
    )
    rows.append((f"{EXPIRING_WAITERS} waits of {EXPIRING_WAIT} s that expire", expired_figure, "target: 1 to 3 s each"))

    # The posts alone first. NGINX sends every request a reader makes (a poll, a long-poll, a
    # stream) to the live listeners and every post to the WSGI servers, so the readers' own CPU
    # is the live listeners' beyond what they spend on the posts alone (each post's NOTIFY).
    # The WSGI servers' CPU is the posts' in every run, and is printed, not subtracted: its
    # difference between two runs is the machine's noise, which made the readers' figure
    # negative when the whole of both was subtracted.
    posting = mixed(args.url, args.database, args.pairs, MIXED_WINDOW, "nothing")
    post_cpu = (posting["wsgi"] + posting["live"]) / max(posting["posts"], 1)
    post_live_cpu = posting["live"] / max(posting["posts"], 1)
    rows.append(
        (
            "mixed chat, the posts alone",
            f"{post_cpu * 1000:.2f} CPU ms per post (live listeners {post_live_cpu * 1000:.2f})",
            f"{posting['posts']} posts in {MIXED_WINDOW:.0f} s",
        )
    )
    readers_cpu = {}
    for mode, name in (
        ("poll", f"polling every {poll_interval(args.pairs):.1f} s"),
        ("wait", "long-polling"),
        ("stream", "on event streams"),
    ):
        figures = mixed(args.url, args.database, args.pairs, MIXED_WINDOW, mode)
        got = max(figures["delivered"], 1)
        total = figures["wsgi"] + figures["live"]
        readers_cpu[mode] = (figures["live"] - figures["posts"] * post_live_cpu) / got
        rows.append(
            (
                f"mixed chat, {args.pairs} readers {name}",
                f"{readers_cpu[mode] * 1000:.2f} CPU ms readers' and {total * 1000 / got:.2f} in all (WSGI"
                f" {figures['wsgi'] * 1000 / got:.2f}, live {figures['live'] * 1000 / got:.2f}),"
                f" {figures['requests'] / got:.2f} requests, per delivered message",
                f"{figures['delivered']} delivered in {MIXED_WINDOW:.0f} s; of all posts, {figures['all_delivered']}/{figures['all_posts']}",
            )
        )
    ratios = {mode: readers_cpu["poll"] / max(readers_cpu[mode], 1e-6) for mode in ("wait", "stream")}
    for mode, ratio in ratios.items():
        rows.append((f"mixed chat, readers' CPU per message, polling / {mode}", f"{ratio:.1f}x", "target 5x"))

    host, port = live_listeners(args.consul)[0]
    rss = [(0, live_worker_rss_mib(port))]
    held = []
    try:
        for count in (args.waiters, args.idle):
            held += hold(host, port, idle_path, count - len(held))
            held_by(port, count)
            rss.append((count, live_worker_rss_mib(port)))
    finally:
        release(held)
    rows += [(f"live listener RSS, {count} idle waiters", f"{mib:.0f} MiB", f"{host}:{port}") for count, mib in rss]

    print("| live scenario | figure | |")
    print("|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    # Issue 21's targets, as make bench's others: each one missed is named, and the exit status is 1.
    checks = [
        ("post → waiter p99 < 100 ms at 1,000 waiters", delivered["p99_ms"] < 100, f"{delivered['p99_ms']:.1f} ms"),
        ("live listener RSS < 300 MiB at 10,000 waiters", rss[-1][1] < 300, f"{rss[-1][1]:.0f} MiB"),
        (
            f"every wait of {EXPIRING_WAIT} s answers its empty page in {EXPIRING_WAIT} s ±1",
            len(expired) == EXPIRING_WAITERS and all(abs(t - EXPIRING_WAIT) <= 1 for t in expired),
            expired_figure,
        ),
        ("page rate with 1,000 waiters within 5%", busy_rps >= 0.95 * quiet_rps, f"{busy_rps / quiet_rps:.0%}"),
        *(
            (f"5x less readers' CPU per message, {mode} vs polling", ratio >= 5, f"{ratio:.1f}x")
            for mode, ratio in ratios.items()
        ),
    ]
    missed = [f"MISSED {target}: {figure}" for target, met, figure in checks if not met]
    print("\n".join(missed) or "live targets: all met")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
