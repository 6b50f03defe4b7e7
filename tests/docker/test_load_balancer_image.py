"""The load balancer image on the real engine, built with the watcher as its renderer (see conftest.py).

A Consul agent container and small backend containers on a network of the test's own; the test registers the
backends in Consul itself (TTL checks it turns passing), so it controls the moment an instance passes.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request

import pytest

from tests.support.docker import TEST_LABEL, address_on, docker
from tests.support.processes import free_port, http_get, wait_until

pytestmark = pytest.mark.slow

NETWORK = "messenger-lb-test"
NO_INSTANCE = (503, b'{"error":"No healthy messenger instance is available; try again shortly."}')
STALL = "old NGINX workers still accepting"


class LoadBalancerSetting:
    """The image under test with a Consul agent and backends, all on this test's network."""

    def __init__(self):
        self.consul_port = free_port()
        self.lb_port = free_port()
        self.backends: dict[str, str] = {}  # service id: address:port

    def run(self, name: str, *args: str) -> None:
        docker("run", "-d", "--name", name, "--label", TEST_LABEL, "--network", NETWORK, *args)

    def start(self) -> LoadBalancerSetting:
        docker("network", "create", "--label", TEST_LABEL, NETWORK)
        self.run("lb-test-consul", "-p", f"127.0.0.1:{self.consul_port}:8500", "hashicorp/consul:1.14.4")
        wait_until(self._leader, 30, interval=0.2, what="the test's Consul agent electing itself")
        self.run(
            "lb-test-lb", "-e", "CONSUL_URL=lb-test-consul:8500", "-p", f"127.0.0.1:{self.lb_port}:8085", "messenger-lb"
        )
        return self

    def _leader(self) -> bool:
        try:
            return self.consul("GET", "/v1/status/leader") not in (b"", b'""')
        except OSError:
            return False

    def consul(self, method: str, path: str, body: dict | None = None) -> bytes:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.consul_port}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read()

    def add_backend(self, service_id: str) -> str:
        """A container answering HTTP on 4000 (Python's http.server in the messenger image), registered critical."""
        name = f"lb-test-{service_id}"
        self.run(name, "--entrypoint", "python", "messenger", "-m", "http.server", "4000")
        address = address_on(name, NETWORK)
        self.consul(
            "PUT",
            "/v1/agent/service/register",
            {
                "Name": "messenger",
                "ID": service_id,
                "Address": address,
                "Port": 4000,
                "Check": {"CheckID": f"service:{service_id}", "TTL": "600s", "Status": "critical"},
            },
        )
        self.backends[service_id] = f"{address}:4000"
        return self.backends[service_id]

    def pass_check(self, service_id: str) -> None:
        self.consul("PUT", f"/v1/agent/check/pass/service:{service_id}")

    def remove_backend(self, service_id: str) -> None:
        self.consul("PUT", f"/v1/agent/service/deregister/{service_id}")
        del self.backends[service_id]

    def get(self) -> tuple[int, bytes, dict]:
        return http_get(f"http://127.0.0.1:{self.lb_port}/health", timeout=5)

    def logs(self) -> str:
        """What the container wrote (NGINX's and the renderer's messages, both streams)."""
        result = subprocess.run(["docker", "logs", "lb-test-lb"], capture_output=True, text=True, timeout=30)
        return result.stdout + result.stderr

    def processes(self) -> list[list[str]]:
        """[pid, parent pid, command line] of every process in the load balancer's container."""
        table = docker("top", "lb-test-lb", "-eo", "pid,ppid,args").splitlines()[1:]
        return [line.split(None, 2) for line in table]

    def answers(self) -> bool:
        try:
            self.get()
            return True
        except OSError:
            return False

    def routed_to(self, upstreams: set[str], attempts: int = 40) -> bool:
        seen = {self.get()[2].get("Upstream-Host") for _ in range(attempts)}
        return seen == upstreams


@pytest.fixture
def setting(docker_clean):
    yield LoadBalancerSetting().start()


def test_load_balancer_image_follows_consul_without_reload_stalls(setting, record_property):
    # NGINX answers at once, with no instance: every request the JSON 503.
    wait_until(setting.answers, 30, interval=0.2, what="the load balancer answering")
    status, body, _ = setting.get()
    assert (status, body) == NO_INSTANCE

    # The renderer runs beside NGINX, not under it: the master's children are its workers only.
    wait_until(
        lambda: any("upstream_watcher.py" in args for _, _, args in setting.processes()),
        30,
        interval=0.2,
        what="the renderer running",
    )
    processes = setting.processes()
    [master] = [pid for pid, _, args in processes if args.startswith("nginx: master")]
    children = [args for _, ppid, args in processes if ppid == master]
    assert children and all(args.startswith("nginx: worker process") for args in children), processes
    [renderer_parent] = [ppid for _, ppid, args in processes if "upstream_watcher.py" in args]
    assert renderer_parent != master

    # From the moment an instance passes its check to the first request it answers through NGINX.
    first = setting.add_backend("backend-1")
    assert setting.get()[:2] == NO_INSTANCE  # registered, critical: not routed
    passed_at = time.monotonic()
    setting.pass_check("backend-1")
    wait_until(
        lambda: setting.get()[2].get("Upstream-Host") == first,
        15,
        interval=0.01,
        what="the first request reaching the new instance",
    )
    to_first_request = time.monotonic() - passed_at
    record_property("seconds_from_passing_to_first_request", round(to_first_request, 3))
    print(f"\nload balancer image: {to_first_request:.3f}s from a passing check to the first request")

    # More instances, then fewer: each change reloads NGINX, none waits for old workers.
    second, third = setting.add_backend("backend-2"), setting.add_backend("backend-3")
    setting.pass_check("backend-2")
    setting.pass_check("backend-3")
    wait_until(lambda: setting.routed_to({first, second, third}), 30, interval=0.2, what="three instances routed")
    setting.remove_backend("backend-1")
    wait_until(lambda: setting.routed_to({second, third}), 30, interval=0.2, what="two instances routed")

    # No instance left: NGINX stays up and answers the JSON 503 again.
    setting.remove_backend("backend-2")
    setting.remove_backend("backend-3")
    wait_until(lambda: setting.get()[:2] == NO_INSTANCE, 30, interval=0.2, what="the 503 with no instance")

    logs = setting.logs()
    assert logs.count("nginx-apply: reloaded NGINX") >= 3, logs
    assert STALL not in logs, logs
