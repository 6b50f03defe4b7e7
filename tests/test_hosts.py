"""The system over three hosts (`make up HOSTS=3`), and what it does when a host, a Consul server, a
host's network or the database's host is lost.

Each host is a network namespace of this machine on one bridge (infrastructure/hosts.sh, addresses in
10.77.1.0/24): a Consul server on each (one raft cluster), PostgreSQL and RabbitMQ of the platform's
own on messenger-host-1, the instances on hosts 2 and 3 (each registered at its host's address), the
worker on host 3; NGINX, its watcher and a Consul client agent on this machine (the edge). Every
drill runs a steady, bounded client loop through the load balancer, measures what the issue asks,
and then asks the database whether every acknowledged post is stored, once, with gap-free indexes.

Namespaces outlive the processes that made them, so the module first removes whatever an earlier
run left (its namespaces, the bridge, its processes), and `make down HOSTS=3` must leave nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from tests.support.infrastructure import INFRA
from tests.support.load_balancer import ClientLoop, alive
from tests.support.processes import REPO_ROOT, ConsulAgent, port_open, wait_until
from tests.support.rabbitmq import QueueReader, RabbitVhost
from tests.support.stack import TRANSCRIPT_EVENTS, LocalStack, run_transcript

pytestmark = pytest.mark.slow

HOSTS = ["messenger-host-1", "messenger-host-2", "messenger-host-3"]
PLATFORM_HOST, APP_HOST, LOST_HOST = HOSTS
BRIDGE = "messenger-br0"
STATE_PREFIX = "messenger-hosts-state-"
# Checks every second, a one-second drain: drills take seconds. Consul reaps a
# critical entry after a minute at the earliest.
TIMINGS = {"CONSUL_CHECK_INTERVAL": "1s", "CONSUL_RETRY_INTERVAL": "1s", "SHUTDOWN_DRAIN_SECONDS": "1"}
# The database script's superuser password, read from the script (one declaration).
_PASSWORD_LINE = re.search(r"^POSTGRES_PASSWORD=(\S+)$", (INFRA / "messenger-db-deploy.sh").read_text(), re.MULTILINE)
assert _PASSWORD_LINE, "messenger-db-deploy.sh declares POSTGRES_PASSWORD"
POSTGRES_PASSWORD = _PASSWORD_LINE.group(1)
BOUND = 10.0  # seconds: the longest any request may take while the database's host is away


def report(name: str, value) -> None:
    """A figure the drills measure, printed for `pytest -s` (not asserted beyond the issue's bounds)."""
    print(f"\n[hosts figure] {name}: {value}")


def run(*command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def namespaces() -> list[str]:
    return [
        line.split()[0] for line in run("ip", "netns", "list").stdout.splitlines() if line.startswith("messenger-host-")
    ]


def links() -> list[str]:
    return re.findall(r"^\d+: (messenger-br0|mh-\d+)[@:]", run("ip", "-o", "link", "show").stdout, re.MULTILINE)


def namespace_pids(host: str) -> list[int]:
    return [int(pid) for pid in run("ip", "netns", "pids", host).stdout.split()]


def processes_of_earlier_runs() -> list[int]:
    """This machine's processes whose command line names a state folder of this module's runs."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if STATE_PREFIX.encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def remove_leftovers() -> None:
    """What an earlier run may have left: its processes here, its hosts (and what runs there), the bridge."""
    for pid in processes_of_earlier_runs():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    result = run(str(INFRA / "hosts.sh"), "down")
    assert result.returncode == 0, result.stderr
    for state in Path(tempfile.gettempdir()).glob(f"{STATE_PREFIX}*"):
        shutil.rmtree(state, ignore_errors=True)


class Hosts(LocalStack):
    """`make ... HOSTS=3` with the test's ports and state folder, and the views the drills need."""

    def __init__(self, state_dir: Path):
        super().__init__(state_dir, "messenger", HOSTS=str(len(HOSTS)), **TIMINGS)
        self.consul = ConsulAgent(self.consul_port)  # the edge's agent (started by the stack, not by this)

    def script(self, name: str, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(INFRA / name), *args], env={**self.env, **env}, capture_output=True, text=True, timeout=timeout
        )
        assert result.returncode == 0, f"{name} {' '.join(args)} failed:\n{result.stderr}"
        return result

    def supervisorctl(self, host: str, *args: str) -> str:
        conf = self.state_dir / "supervisor" / host / "supervisord.conf"
        return run("supervisorctl", "-c", str(conf), *args).stdout

    def routed(self) -> set[str]:
        """The upstream list the watcher applied (address:port of each instance)."""
        return set(json.loads((self.state_dir / "load-balancer/nginx/status.json").read_text())["instances"])

    def wait_routed_hosts(self, hosts: set[str], timeout: float = 60) -> set[str]:
        """Until the load balancer routes to instances on exactly these hosts' addresses."""
        return wait_until(
            lambda: {a.rsplit(":", 1)[0] for a in self.routed()} == {self.address(h) for h in hosts} and self.routed(),
            timeout,
            interval=0.05,
            what=f"routes to exactly {sorted(hosts)}",
        )

    @staticmethod
    def address(host: str) -> str:
        return f"10.77.1.{10 + int(host.rsplit('-', 1)[1])}"

    def kv_round_trip(self, key: str) -> None:
        """A KV write and read through the edge's agent (the cluster's quorum), retried while a server is lost."""
        value = f"{key}-{time.monotonic_ns()}"

        def written_and_read():
            self.consul.kv_put(key, value)
            return self.consul.kv_get(key) == value

        wait_until(written_and_read, 30, interval=0.2, what=f"KV write and read of {key}")

    def instance_pids(self) -> dict[str, int]:
        return {p.stem: int(p.read_text()) for p in (self.state_dir / "messenger").glob("*.pid")}

    def kv_value(self, key: str) -> str:
        """A KV value through the edge's agent, which may answer slowly for a moment after a drill."""
        return wait_until(lambda: self.consul.kv_get(key), 30, interval=0.5, what=f"Consul KV {key}")

    def connect_database(self) -> psycopg.Connection:
        return psycopg.connect(
            host=self.kv_value("messenger-db-host"),
            port=self.kv_value("messenger-db-port"),
            user="postgres",
            password=POSTGRES_PASSWORD,
            dbname="messenger",
            connect_timeout=5,
        )

    def kill_host(self, host: str) -> float:
        """SIGKILL every process of the host at once, as a host that loses power; returns when."""
        pids = namespace_pids(host)
        assert pids, f"nothing runs on {host}"
        killed_at = time.monotonic()
        run("kill", "-KILL", *map(str, pids))
        wait_until(lambda: not any(alive(pid) for pid in pids), 10, what=f"every process of {host} gone")
        return killed_at


def assert_every_201_stored_once(hosts: Hosts, loop: ClientLoop, conversation_id: int = 1) -> None:
    posts = [o for o in loop.outcomes if o.method == "POST"]
    assert len(posts) >= 20, "the drill posted messages while it ran"
    with hosts.connect_database() as conn:
        stored: dict[str, int] = dict(
            conn.execute(
                "SELECT content, count(*) FROM messages WHERE content = ANY(%s) GROUP BY content",
                [[o.content for o in posts]],
            ).fetchall()
        )
        indexes = [
            i
            for (i,) in conn.execute('SELECT "index" FROM messages WHERE channel_id = %s ORDER BY 1', [conversation_id])
        ]
    assert [c for c, n in stored.items() if n != 1] == []
    assert [o.content for o in posts if o.status == 201 and o.content not in stored] == []
    assert indexes == list(range(1, len(indexes) + 1))


@pytest.fixture(scope="module")
def hosts():
    remove_leftovers()
    # Not under pytest's tmp_path: PostgreSQL runs as the postgres user, who must reach its data folder.
    state_dir = Path(tempfile.mkdtemp(prefix=STATE_PREFIX))
    state_dir.chmod(0o755)
    hosts = Hosts(state_dir)
    started = time.monotonic()
    hosts.up_output = hosts.make("up", timeout=400)
    report("make up HOSTS=3 (from nothing)", f"{time.monotonic() - started:.1f}s")
    try:
        yield hosts
    finally:
        subprocess.run(["make", "down"], cwd=REPO_ROOT, env=hosts.env, capture_output=True, timeout=300)
        remove_leftovers()


def test_make_up_hosts_3_serves_the_transcript_from_instances_on_two_hosts(hosts):
    up = hosts.up_output
    assert up.count(" passing ") == 3, up
    # One raft cluster of three servers, one per host; the edge is a client.
    peers = json.loads(run("curl", "-s", f"{hosts.consul.url}/v1/status/peers").stdout)
    assert sorted(peers) == [f"{hosts.address(h)}:8300" for h in HOSTS]
    # The platform wrote its hosts' addresses to KV; every instance registered its own host's address.
    assert hosts.consul.kv_get("messenger-db-host") == hosts.consul.kv_get("amqp-host") == hosts.address(PLATFORM_HOST)
    registered = {(e["ServiceAddress"], e["Node"]) for e in hosts.consul.catalog_instances("messenger")}
    assert {node for _, node in registered} == {APP_HOST, LOST_HOST}
    assert all(address == hosts.address(node) for address, node in registered), registered

    reader = QueueReader(RabbitVhost("/"), "chat_queue", host=hosts.consul.kv_get("amqp-host"))
    reader.declare()
    try:
        run_transcript(hosts)
        upstreams = {hosts.get("/health")[2]["Upstream-Host"].rsplit(":", 1)[0] for _ in range(30)}
        assert upstreams == {hosts.address(APP_HOST), hosts.address(LOST_HOST)}
        events = reader.wait_for(2, timeout=30)
        assert [json.loads(e.body) for e in events] == TRANSCRIPT_EVENTS
    finally:
        reader.close()
    ps = hosts.make("ps")
    assert ps.count(" passing ") == 3 and "messenger-db-primary" in ps and PLATFORM_HOST in ps


def test_an_app_host_that_dies_leaves_the_upstreams_and_loses_nothing_accepted(hosts):
    hosts.wait_routed_hosts({APP_HOST, LOST_HOST})
    with ClientLoop(hosts, conversation_id=1, user_id=1, threads=4, max_requests=20000, max_seconds=150) as loop:
        wait_until(lambda: loop.count() >= 100, 30, what="100 requests before the host dies")
        killed_at = hosts.kill_host(LOST_HOST)
        out_at = hosts.wait_routed_hosts({APP_HOST}, timeout=60) and time.monotonic()
        # Two servers of three: quorum holds, KV reads and writes go on.
        hosts.kv_round_trip("drill-host-lost")
        after = loop.count()
        wait_until(lambda: loop.count() >= after + 100, 30, what="100 requests after the host left")

        # The host boots again: its supervisord starts its Consul server, instance and worker.
        hosts.script("hosts.sh", "boot", LOST_HOST)
        hosts.wait_routed_hosts({APP_HOST, LOST_HOST}, timeout=90)
        back = loop.count()
        wait_until(lambda: loop.count() >= back + 50, 30, what="50 requests with the host back")

    failures = loop.failures()
    report(
        "app host lost -> out of the upstreams",
        f"{out_at - killed_at:.2f}s "
        f"(check interval {TIMINGS['CONSUL_CHECK_INTERVAL']}, watcher wait 0.25-1s; {loop.count()} requests, "
        f"{len(failures)} failed)",
    )
    # Only posts in flight to the dying host: NGINX had sent them (some over a kept-alive connection
    # the dead instance had closed) before the host left the upstreams, and may not pass a POST on,
    # so it answers 502; or a response was cut short. Nothing fails after the host left.
    for failure in failures:
        assert failure.ended > killed_at and failure.started < out_at, failure
        assert failure.upstream is None or hosts.address(LOST_HOST) in failure.upstream, failure
        assert failure.method == "POST" or failure.status is None, failure
    assert_every_201_stored_once(hosts, loop)


def test_a_lost_consul_server_stops_no_deploy_and_a_whole_cluster_restart_keeps_everything(hosts):
    lost = f"consul-{LOST_HOST}"
    lost_at = time.monotonic()
    hosts.supervisorctl(LOST_HOST, "stop", lost)  # stopped without leaving: the cluster counts it lost
    hosts.kv_round_trip("drill-server-lost")
    # A deploy goes on: onto the host whose agent runs (its instance registers with it).
    port = int(hosts.script("messenger-deploy.sh", DEPLOY_HOST=APP_HOST).stdout.strip().rsplit("-", 1)[1])
    wait_until(
        lambda: (
            (hosts.address(APP_HOST), port)
            in {(e["Service"]["Address"], e["Service"]["Port"]) for e in hosts.consul.healthy_instances("messenger")}
        ),
        60,
        interval=0.1,
        what="the new instance passing",
    )
    deployed_at = time.monotonic()
    report("a Consul server lost -> the next successful deploy", f"{deployed_at - lost_at:.2f}s")
    hosts.supervisorctl(LOST_HOST, "start", lost)
    hosts.make("scale", "N=3")

    keys = {
        key: hosts.consul.kv_get(key)
        for key in (
            "messenger-db-host",
            "messenger-db-port",
            "messenger-db-application-user",
            "messenger-db-password-never-do-this",
            "messenger-db-migrator-user",
            "messenger-db-migrator-password-never-do-this",
            "amqp-host",
            "amqp-port",
        )
    }
    assert all(keys.values()), keys
    registrations = {e["ServiceID"] for e in hosts.consul.catalog_instances("messenger")}

    # Every server stopped, then started again: raft and the agents' services are on disk.
    for host in HOSTS:
        hosts.supervisorctl(host, "stop", f"consul-{host}")
    for host in HOSTS:
        hosts.supervisorctl(host, "start", f"consul-{host}")
    wait_until(lambda: hosts.consul.kv_get("amqp-host"), 60, interval=0.2, what="KV answering after the restart")
    assert {key: hosts.consul.kv_get(key) for key in keys} == keys
    wait_until(
        lambda: {e["Service"]["ID"] for e in hosts.consul.healthy_instances("messenger")} == registrations,
        60,
        what="the same registrations passing again",
    )
    hosts.wait_routed_hosts({APP_HOST, LOST_HOST})


def test_make_scale_counts_live_instances_only_and_replaces_a_dead_one(hosts):
    """An instance its supervisor no longer runs is dead: scale removes it and deploys another."""
    live = sorted(hosts.instance_pids())
    dead = next(i for i in live if i.startswith(f"messenger-{APP_HOST.removeprefix('messenger-')}-"))
    hosts.supervisorctl(APP_HOST, "stop", dead)  # stopped, as one supervisord gave up on would be
    scaled = hosts.make("scale", "N=3")
    assert f"replacing 1 dead instance(s): {dead}" in scaled
    assert scaled.count(" passing ") == 3, scaled
    now = sorted(hosts.instance_pids())
    assert dead not in now and len(now) == 3 and set(live) - {dead} < set(now)
    hosts.wait_routed_hosts({APP_HOST, LOST_HOST})


def test_a_host_whose_link_is_cut_leaves_the_upstreams_and_serves_again_once_restored(hosts):
    hosts.wait_routed_hosts({APP_HOST, LOST_HOST})
    pids = hosts.instance_pids()
    # Bounded, but longer than the drill's own waits add up to (a cut link can take Consul's
    # 30 s keepalive to notice, a restored one its 30 s retry to rejoin).
    with ClientLoop(hosts, conversation_id=1, user_id=1, threads=4, max_requests=60000, max_seconds=330) as loop:
        wait_until(lambda: loop.count() >= 100, 30, what="100 requests before the cut")
        cut_at = time.monotonic()
        hosts.script("hosts.sh", "cut", LOST_HOST)
        out_at = hosts.wait_routed_hosts({APP_HOST}, timeout=60) and time.monotonic()
        hosts.kv_round_trip("drill-link-cut")
        after = loop.count()
        wait_until(lambda: loop.count() >= after + 100, 30, what="100 requests after the host left")

        hosts.script("hosts.sh", "restore", LOST_HOST)
        restored_at = time.monotonic()
        # Nobody acts: the host's agent rejoins, its checks pass, the watcher routes to it again.
        hosts.wait_routed_hosts({APP_HOST, LOST_HOST}, timeout=120)
        back_at = time.monotonic()
        back = loop.count()
        wait_until(lambda: loop.count() >= back + 50, 30, what="50 requests with the host back")

    failures = loop.failures()
    report(
        "link cut -> out of the upstreams",
        f"{out_at - cut_at:.2f}s; restored -> routed again "
        f"{back_at - restored_at:.2f}s ({loop.count()} requests, {len(failures)} failed)",
    )
    # What failed was on its way to the cut host before it left the upstreams (nothing answers from a
    # cut link: the client gives up); nothing after.
    for failure in failures:
        assert failure.started < out_at, failure
        assert failure.upstream is None or hosts.address(LOST_HOST) in failure.upstream, failure
    assert hosts.instance_pids() == pids  # no instance was restarted
    assert_every_201_stored_once(hosts, loop)


def test_the_database_host_restarting_gives_bounded_503s_and_recovers_with_no_instance_restarted(hosts):
    hosts.wait_routed_hosts({APP_HOST, LOST_HOST})
    pids = hosts.instance_pids()
    with ClientLoop(hosts, conversation_id=1, user_id=1, threads=4, max_requests=20000, max_seconds=150) as loop:
        wait_until(lambda: loop.count() >= 100, 30, what="100 requests before the restart")
        killed_at = hosts.kill_host(PLATFORM_HOST)
        first_503_at = wait_until(
            lambda: any(o.status == 503 for o in loop.outcomes[-20:]) and time.monotonic(),
            30,
            what="503s while it is away",
        )
        hosts.script("hosts.sh", "boot", PLATFORM_HOST)  # its supervisord starts Consul, PostgreSQL, RabbitMQ
        booted_at = time.monotonic()
        wait_until(lambda: [o.status for o in loop.outcomes[-30:]].count(201) >= 5, 90, what="posts stored again")
        recovered_at = time.monotonic()
        after = loop.count()
        wait_until(lambda: loop.count() >= after + 100, 30, what="100 requests after recovery")

    report(
        "database host restart",
        f"503s {first_503_at - killed_at:.2f}s after the kill; booted "
        f"{booted_at - killed_at:.2f}s after it; posts stored again {recovered_at - booted_at:.2f}s after the boot "
        f"({loop.count()} requests, {len(loop.failures())} not 2xx, longest "
        f"{max(o.ended - o.started for o in loop.outcomes):.2f}s)",
    )
    outcomes = loop.outcomes
    assert {o.status for o in outcomes} <= {200, 201, 503, None}, {o.status for o in outcomes}
    assert max(o.ended - o.started for o in outcomes) < BOUND
    assert [o for o in outcomes if o.status is None and not o.started < killed_at + 0.25 < o.ended] == []
    assert all(o.ok for o in outcomes if o.started > recovered_at + 5)
    assert hosts.instance_pids() == pids and all(map(alive, pids.values()))
    assert_every_201_stored_once(hosts, loop)


def test_make_down_hosts_3_leaves_no_host_link_process_pid_file_or_registration(hosts):
    started = time.monotonic()
    hosts.make("down")
    report("make down HOSTS=3", f"{time.monotonic() - started:.1f}s")
    assert namespaces() == [] and links() == []
    assert hosts.processes() == [] and processes_of_earlier_runs() == []
    assert not port_open(hosts.lb_port) and not port_open(hosts.consul_port)
    assert sorted(p.name for p in hosts.state_dir.rglob("*.pid")) == []
    # Every agent's own registrations are on disk with its data: none is left.
    assert sorted(str(p) for p in hosts.state_dir.glob("platform/*.data/services/*")) == []
