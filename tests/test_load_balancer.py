"""The load balancer in front of a live topology: real Consul, real NGINX, real instances.

Everything is started the way an operator starts it, in the local runtime: the
instances by infrastructure/messenger-deploy.sh (gunicorn on PostgreSQL, a
database of these tests' own), the load balancer by
infrastructure/messenger-load-balancer-deploy.sh (upstream_watcher.py and
NGINX) on a free loopback port. Discovery timings are shortened (checks every
second, a 2 s drain on SIGTERM) so every drill takes seconds.

The drills run a steady, bounded client loop through the load balancer (a few
threads, a new connection per request, GETs and POSTs with unique contents) and
then ask the database whether any message was stored twice.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.support import figures
from tests.support.browser import dump_dom
from tests.support.load_balancer import ClientLoop, Topology, alive
from tests.support.processes import http_get, wait_until

pytestmark = pytest.mark.slow

NO_INSTANCE = {"error": "No healthy messenger instance is available; try again shortly."}


@pytest.fixture(scope="module")
def topology():
    # Not under pytest's tmp_path: its clean-up of older runs must never touch
    # the folder of processes still running.
    state_dir = Path(tempfile.mkdtemp(prefix="messenger-lb-state-"))
    topology = Topology(state_dir, database=f"{os.environ['PGDATABASE']}_lb_instances")
    try:
        yield topology.start()
    finally:
        topology.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def conversation(topology):
    """A conversation between seed users 1 and 2, created through the load balancer."""
    topology.ensure_instances(1)
    status, body, _ = topology.request("POST", "/conversations", {"participant_ids": [1, 2]})
    assert status == 201, body
    return json.loads(body)["conversation"]["id"]


def report(name: str, value) -> None:
    figures.report("load-balancer", name, value)


def assert_each_post_stored_once(topology: Topology, loop: ClientLoop, conversation_id: int) -> None:
    """Every acknowledged POST is stored once, none twice, and indexes have no gap."""
    posts = [o for o in loop.outcomes if o.method == "POST"]
    assert len(posts) >= 20, "the drill posted messages while it ran"
    rows = dict(
        topology.query(
            "SELECT content, count(*) FROM messages WHERE content = ANY(%s) GROUP BY content",
            ([o.content for o in posts],),
        )
    )
    assert [c for c, n in rows.items() if n != 1] == []
    assert [o.content for o in posts if o.status == 201 and o.content not in rows] == []
    indexes = [
        i
        for (i,) in topology.query('SELECT "index" FROM messages WHERE channel_id = %s ORDER BY 1', (conversation_id,))
    ]
    assert indexes == list(range(1, len(indexes) + 1))


def test_requests_through_the_load_balancer_reach_all_three_instances(topology):
    instances = topology.ensure_instances(3)

    served = Counter()
    for _ in range(300):
        status, body, headers = topology.get("/health")
        assert (status, body) == (200, b"OK")
        served[headers["Upstream-Host"]] += 1

    assert set(served) == {topology.address(i) for i in instances}
    assert sum(served.values()) == 300
    report("300 requests per instance", dict(served))


def test_health_and_reads_reach_the_live_listener_and_upstream_host_names_the_instance_as_consul_does(
    topology, conversation
):
    """NGINX sends a client's /health and the plain reads to the instance's live listener (its access log records
    the live port) and a write to its ordinary port; Upstream-Host names the instance by its catalog address and
    port in every case."""
    [instance] = topology.ensure_instances(1)
    address = topology.address(instance)
    [entry] = topology.infra.passing().values()
    live_address = f"{entry['Address']}:{entry['Meta']['live_port']}"
    assert live_address != address
    agent = f"upstream-host-probe-{time.monotonic_ns()}"
    calls = [
        ("GET", "/health", None, "live"),
        ("GET", f"/conversations/{conversation}/messages", None, "live"),
        ("GET", "/conversations", None, "live"),
        ("POST", "/users", {"name": agent}, "ordinary"),
    ]
    for method, path, body, _ in calls:
        status, _, headers = topology.request(method, path, body, headers={"User-Agent": agent, "User-Id": "1"})
        assert status in (200, 201) and headers["Upstream-Host"] == address, (method, path, status, headers)
    logged = [line for line in topology.nginx_log("access").read_text().splitlines() if agent in line]
    upstreams = [re.search(r"upstream=(\S+)", line).group(1) for line in logged]
    assert upstreams == [live_address if port == "live" else address for *_, port in calls], logged


def test_links_the_service_builds_point_back_through_the_load_balancer(topology):
    """Host is passed through, so `next` pages (and the browsable API's links) stay behind port LB."""
    topology.ensure_instances(1)
    status, body, headers = topology.get("/users?limit=1")
    assert status == 200
    assert json.loads(body)["next"] == f"{topology.lb_url}/users?after_id=1&limit=1"
    assert headers["Upstream-Host"] in topology.passing_addresses()


def test_a_new_instance_serves_within_two_seconds_of_passing_its_first_check(topology):
    topology.ensure_instances(3)
    seen: list[tuple[float, str]] = []
    stop = threading.Event()

    def probe():
        deadline = time.monotonic() + 90
        while not stop.is_set() and time.monotonic() < deadline:
            status, _, headers = topology.get("/health")
            if status == 200:
                seen.append((time.monotonic(), headers["Upstream-Host"]))

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    try:
        new = topology.deploy_instance()
        address = topology.address(new)
        passed_at = wait_until(
            lambda: address in topology.passing_addresses() and time.monotonic(),
            30,
            interval=0.02,
            what=f"{new} to pass its check",
        )
        served_at = wait_until(
            lambda: next((t for t, up in seen if up == address), None),
            10,
            interval=0.02,
            what=f"a request served by {new}",
        )
    finally:
        stop.set()
        prober.join(timeout=10)

    delay = served_at - passed_at
    report("passing check -> first request served", f"{delay:.3f}s")
    assert delay <= 2.0


def test_graceful_stop_under_load_fails_no_request(topology, conversation):
    instances = topology.ensure_instances(3)
    victim = instances[0]
    reloads_before = topology.watcher_status()["reloaded"]

    with ClientLoop(topology, conversation, user_id=1) as loop:
        wait_until(lambda: loop.count() >= 100, 30, what="100 requests before the stop")
        topology.stop_instance(victim)  # SIGTERM: deregister, drain, finish, exit
        stopped_at = time.monotonic()
        after = loop.count()
        wait_until(lambda: loop.count() >= after + 100, 30, what="100 requests after the stop")

    report(
        "SIGTERM drill",
        f"{loop.count()} requests, {len(loop.failures())} failed, "
        f"{topology.watcher_status()['reloaded'] - reloads_before} reload(s)",
    )
    assert loop.failures() == []
    served_by_victim = [o for o in loop.outcomes if o.upstream == topology.address(victim)]
    assert served_by_victim, "the stopped instance served part of the load before it left"
    assert [o for o in served_by_victim if o.started > stopped_at] == []
    assert_each_post_stored_once(topology, loop, conversation)


def test_a_stopping_instance_the_load_balancer_still_routes_to_serves_past_its_drain_and_fails_no_request(
    topology, conversation
):
    """The load balancer drops a deregistered instance late (its watcher paused here: a loaded host, a slow
    agent): the instance goes on serving past SHUTDOWN_DRAIN_SECONDS while requests arrive, and stops once
    they stop, so no request meets a server that no longer accepts."""
    (other,) = topology.ensure_instances(1)
    drain = 6.0
    # Past the drain, and past the second or two the instance's live listener takes to stop (the WSGI
    # workers serve on meanwhile), yet within the longest drain (twice `drain`) with time left for the
    # watcher to render the list once it runs again.
    late = drain + 3.0
    victim = topology.infra.deploy(SHUTDOWN_DRAIN_SECONDS=str(drain))
    topology.wait_routed({topology.address(other), topology.address(victim)})
    watcher = topology.watcher_pid()

    with ClientLoop(topology, conversation, user_id=1, threads=4, max_requests=100000, max_seconds=120) as loop:
        wait_until(lambda: loop.count() >= 100, 30, what="100 requests before the stop")
        os.kill(watcher, signal.SIGSTOP)  # NGINX's list keeps naming the victim after it deregisters
        try:
            stopped_at = time.monotonic()
            stopping = topology.infra.start("messenger-stop.sh", victim)
            try:
                served_late = wait_until(
                    lambda: [
                        o
                        for o in loop.snapshot()
                        if o.upstream == topology.address(victim) and o.ok and o.started > stopped_at + late
                    ],
                    late + 10,
                    interval=0.05,
                    what=f"a request the stopping instance served more than {late}s after its SIGTERM",
                )
            except TimeoutError as exc:
                raise AssertionError(f"{exc}\n{_evidence(topology, victim)}") from None
            assert stopping.poll() is None, "the instance stopped while the load balancer still routed to it"
        finally:
            os.kill(watcher, signal.SIGCONT)
        topology.wait_routed({topology.address(other)})
        _, stop_errors = stopping.communicate(timeout=60)
        stopped = time.monotonic() - stopped_at
        after = loop.count()
        wait_until(lambda: loop.count() >= after + 100, 30, what="100 requests after the stop")

    report("a late render: the stopping instance served until", f"{stopped:.1f}s after its SIGTERM (drain {drain}s)")
    assert stopping.returncode == 0, stop_errors
    assert served_late
    assert loop.failures() == [], _evidence(topology, victim)
    assert_each_post_stored_once(topology, loop, conversation)


def _process_group(pgid: int) -> list[int]:
    """The processes whose process group is `pgid` (an instance: its master and workers)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


def _exited(pid: int, pgid: int) -> bool:
    """Whether `pid` of group `pgid` has ended: gone, a zombie (its sockets closed), or the pid reused."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return True
    return fields[0] in ("Z", "X") or int(fields[2]) != pgid


def _evidence(topology, instance_id: str) -> str:
    """What a failed drill shows beside its figures: NGINX's error log and the instance's own log, their ends."""
    error_log = topology.nginx_log("error")
    instance_log = topology.state_dir / "messenger" / f"{instance_id}.log"
    return "\n".join(
        f"--- {path.name}, its last lines:\n" + "\n".join(path.read_text().splitlines()[-30:])
        for path in (error_log, instance_log)
        if path.exists()
    )


# How NGINX logs a request it wrote on a kept-alive connection the instance had closed (here: by dying) before
# NGINX read that close; a refused connect ("111: Connection refused") is never one of them.
DROPPED_CONNECTION_ERRORS = (
    "upstream prematurely closed connection",
    "(104: Connection reset by peer)",
    "(32: Broken pipe)",
)


def _dropped_connection_posts(error_log: Path, offset: int, address: str) -> list[str]:
    """NGINX's errors since `offset` for a POST it had sent to `address` on a connection the instance had dropped."""
    with error_log.open() as log:
        log.seek(offset)
        lines = log.read().splitlines()
    return [
        line
        for line in lines
        if '"POST ' in line
        and f'upstream: "http://{address}/' in line
        and any(e in line for e in DROPPED_CONNECTION_ERRORS)
    ]


def test_sigkill_under_load_fails_only_requests_in_flight_and_stores_no_post_twice(topology, conversation):
    """SIGKILL an instance under load: only what it had in flight fails, and its supervisor brings it back."""
    instances = topology.ensure_instances(3)
    victim = instances[0]
    address = topology.address(victim)
    victim_pid = topology.infra.pid(victim)
    reloads_before = topology.watcher_status()["reloaded"]

    def entries_at_address() -> set[str]:
        return {sid for sid, s in topology.infra.passing().items() if f"{s['Address']}:{s['Port']}" == address}

    killed_ids = entries_at_address()
    group = _process_group(victim_pid)
    error_log = topology.nginx_log("error")
    error_log_offset = error_log.stat().st_size
    with ClientLoop(topology, conversation, user_id=1) as loop:
        wait_until(lambda: loop.count() >= 100, 30, what="100 requests before the kill")
        killed_at = time.monotonic()
        topology.kill_instance(victim)
        # Until every process of the group has exited, the kernel still accepts connections on its
        # listening socket: a loaded machine took 0.5 s to run them to their end once.
        gone_at = wait_until(
            lambda: all(_exited(pid, victim_pid) for pid in group) and time.monotonic(),
            30,
            interval=0.005,
            what=f"every process of {victim} ended",
        )
        # Its entry stops passing (its check turns critical), or the process its
        # supervisor started again already took the entry over.
        critical_at = wait_until(
            lambda: not (entries_at_address() & killed_ids) and time.monotonic(),
            30,
            interval=0.02,
            what=f"{victim}'s entry to stop passing",
        )
        wait_until(lambda: topology.infra.pid(victim) != victim_pid, 30, what=f"{victim} started again")
        topology.wait_routed({topology.address(i) for i in instances}, timeout=60)
        back_at = time.monotonic()
        after = loop.count()
        wait_until(lambda: loop.count() >= after + 150, 30, what="150 requests after it came back")

    failures = loop.failures()
    report(
        "SIGKILL drill",
        f"{loop.count()} requests, {len(failures)} failed "
        f"(started {[round(f.started - killed_at, 3) for f in failures]}s after the kill), "
        f"its processes ended {gone_at - killed_at:.3f}s after it, "
        f"entry out after {critical_at - killed_at:.2f}s, "
        f"started again and routed after {back_at - killed_at:.2f}s, "
        f"{topology.watcher_status()['reloaded'] - reloads_before} reload(s)",
    )
    # After the check turned critical: nothing fails.
    assert [f for f in failures if f.started >= critical_at] == []
    # Before: only what the dead instance had in flight. Until its processes have ended, the kernel still
    # accepts connections for it; a request sent to it then fails one of two ways: a POST NGINX must not pass
    # on to another instance answers 502 (a GET or a refused connection goes to the next instance), or a
    # response the instance had begun to send is cut short. Once they have ended, its port refuses, and NGINX
    # passes the request on. The margin is the poll's own granularity.
    # One more way, with the processes gone: NGINX writes a POST on a connection it keeps alive to the instance
    # before it has read that the instance closed it (a starved NGINX worker: fresh-clone runs saw POSTs 0.1 to
    # 0.3 s after the processes ended). That POST never reached the instance either, and NGINX must not resend
    # it; each such late failure has NGINX's own error for a dropped connection beside it, never a refused one.
    late = [f for f in failures if f.started >= gone_at + 0.05]
    dropped = _dropped_connection_posts(error_log, error_log_offset, address) if late else []
    assert len(late) <= len(dropped), (late, _evidence(topology, victim))
    for failure in failures:
        assert failure.ended > killed_at, failure
        if failure.status is None:
            assert "IncompleteRead" in failure.error, failure
        else:
            assert (failure.method, failure.status, failure.upstream) == ("POST", 502, address), (
                failure,
                _evidence(topology, victim),
            )
    assert_each_post_stored_once(topology, loop, conversation)


def test_no_healthy_instance_answers_503_json_until_one_comes_back_without_a_restart(topology):
    topology.ensure_instances(1)
    nginx_master = topology.nginx_master_pid()
    watcher_pid = topology.watcher_status()["pid"]

    topology.stop_instance()  # all of them
    topology.wait_routed(set())
    for method, body in (("GET", None), ("POST", {"participant_ids": [2, 3]})):
        status, raw, headers = topology.request(method, "/conversations", body, headers={"User-Id": "1"})
        assert (status, json.loads(raw)) == (503, NO_INSTANCE)
        assert headers["Content-Type"] == "application/json"
        assert headers["Retry-After"] == "1"
    os.kill(nginx_master, 0)  # NGINX still runs

    back = topology.deploy_instance()
    topology.wait_routed({topology.address(back)})
    status, body, headers = topology.get("/health")
    assert (status, body, headers["Upstream-Host"]) == (200, b"OK", topology.address(back))
    assert topology.nginx_master_pid() == nginx_master
    assert topology.watcher_status()["pid"] == watcher_pid


def test_consul_outage_keeps_traffic_flowing_and_changes_are_picked_up_when_it_returns(topology, conversation):
    instances = topology.ensure_instances(2)
    known = {topology.address(i) for i in instances}

    # Bounded, but longer than the drill's own waits add up to (its default 60 s ran out under the parallel
    # suite before the new instance was routed: a loop that had stopped read as the instance taking no load).
    with ClientLoop(topology, conversation, user_id=2, max_requests=200000, max_seconds=300) as loop:
        wait_until(lambda: loop.count() >= 50, 30, what="50 requests before the outage")
        # The loop names an answer from a live listener's port by its instance through Consul's catalog (a read
        # first seen during the outage was left as the port: CI saw one): learn every instance's ports now.
        topology.remember_instances()
        topology.consul.stop()
        wait_until(
            lambda: topology.watcher_status()["consul_reachable"] is False,
            30,
            what="the watcher to notice Consul is gone",
        )
        during = loop.count()
        wait_until(lambda: loop.count() >= during + 150, 30, what="150 requests during the outage")
        served_during_outage = {o.upstream for o in loop.outcomes[during : during + 150]}

        # Consul comes back empty (a dev agent keeps nothing); the instances
        # register again on their own, and a new one is picked up.
        topology.consul.start()
        topology.write_kv()
        wait_until(lambda: topology.passing_addresses() == known, 30, what="the instances to register again")
        new = topology.deploy_instance()
        topology.wait_routed(known | {topology.address(new)}, timeout=30)
        wait_until(
            lambda: any(o.upstream == topology.address(new) for o in loop.outcomes[-50:]),
            30,
            what="the new instance to serve part of the load",
        )

    report("Consul outage drill", f"{loop.count()} requests, {len(loop.failures())} failed")
    assert loop.failures() == []
    assert served_during_outage == known
    assert_each_post_stored_once(topology, loop, conversation)


def test_body_limits_and_metrics_answer_json_through_the_load_balancer(topology):
    topology.ensure_instances(1)

    status, body, headers = topology.request("POST", "/users", {"name": "x" * 200_000})
    assert (status, json.loads(body)) == (413, {"error": "Request body is larger than JSON_BODY_LIMIT (102400 bytes)"})
    assert "Upstream-Host" in headers  # the service's own answer

    status, body, headers = topology.request("POST", "/users", {"name": "x" * 2_000_000})
    assert (status, json.loads(body)) == (413, {"error": "Request body is larger than the load balancer accepts (1mb)"})

    status, body, headers = topology.get("/metrics")
    assert (status, json.loads(body)) == (404, {"error": "No route for GET /metrics"})
    assert "Upstream-Host" not in headers  # never reached an instance


def test_browsable_api_renders_in_chromium_through_the_load_balancer(topology, tmp_path):
    topology.ensure_instances(2)
    dom = dump_dom(f"{topology.lb_url}/users", tmp_path / "profile")

    assert re.search(r"<title>\s*Users – Django REST framework\s*</title>", dom), dom[:2000]
    assert "James Blanderphone" in dom and "Flambaravo Chortleblatt" in dom
    stylesheets = re.findall(r'<link rel="stylesheet" type="text/css" href="(/static/[^"]+\.css)"', dom)
    assert "/static/rest_framework/css/bootstrap.min.css" in stylesheets
    # The browser itself fetched every stylesheet through the load balancer...
    access_log = topology.nginx_log("access").read_text()
    for href in stylesheets:
        assert re.search(rf'"GET {re.escape(href)} HTTP/1\.1" 200 .*HeadlessChrome', access_log), href
        # ...and an instance served it as CSS.
        status, body, headers = http_get(f"{topology.lb_url}{href}")
        assert (status, headers["Content-Type"].split(";")[0]) == (200, "text/css")
        assert headers["Upstream-Host"] in topology.passing_addresses()
        assert len(body) == int(headers["Content-Length"]) > 0


def test_deploy_is_idempotent_and_a_killed_watcher_is_started_again_and_adopts_nginx(topology):
    """supervisord starts a SIGKILLed watcher again, with no deploy run; the new one adopts the NGINX that serves on."""
    topology.ensure_instances(1)
    watcher_pid = topology.watcher_pid()
    nginx_master = topology.nginx_master_pid()

    topology.deploy_load_balancer()
    assert topology.watcher_pid() == watcher_pid

    os.kill(watcher_pid, signal.SIGKILL)
    new_watcher = topology.wait_watcher_replaced(watcher_pid)
    assert topology.get("/health")[0] == 200  # NGINX served on alone
    assert topology.nginx_master_pid() == nginx_master  # adopted, not restarted
    added = topology.deploy_instance()
    topology.wait_routed({topology.address(i) for i in topology.running_instances()})
    status, _, headers = topology.get("/health")
    assert status == 200 and headers["Upstream-Host"] in topology.passing_addresses()
    assert topology.watcher_pid() == new_watcher
    topology.stop_instance(added)


def test_the_whole_load_balancer_killed_is_started_again_by_supervisord_and_answers_again(topology):
    """NGINX and its watcher SIGKILLed, as a crash would: supervisord starts the watcher, which starts NGINX."""
    instances = topology.ensure_instances(1)
    watcher_pid = topology.watcher_pid()
    nginx_master = topology.nginx_master_pid()

    # NGINX first (master and workers: its own process group), so the watcher
    # that supervisord starts again cannot find it still running.
    os.killpg(nginx_master, signal.SIGKILL)
    os.kill(watcher_pid, signal.SIGKILL)
    wait_until(lambda: not alive(nginx_master), 10, what="NGINX to die")

    topology.wait_watcher_replaced(watcher_pid)
    try:
        wait_until(lambda: topology.get("/health")[0] == 200, 30, interval=0.05, what="the load balancer to answer")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\nwatcher log (tail):\n{topology.watcher_log()[-3000:]}") from None
    assert topology.nginx_master_pid() != nginx_master
    topology.wait_routed({topology.address(i) for i in instances})
    status, body, headers = topology.get("/health")
    assert (status, body, headers["Upstream-Host"]) == (200, b"OK", topology.address(instances[0]))
