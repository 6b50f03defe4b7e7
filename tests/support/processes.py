"""Real processes for system tests: free ports, waiting, and a Consul agent.

Everything here runs on loopback only, and every wait is bounded in time.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from messenger.live_listener import PROCESS_NAME as LIVE_PROCESS_NAME

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    return free_ports(1)[0]


def free_ports(count: int, exclude: tuple[int, ...] = ()) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 right now, none of `exclude`.

    Each is held open until all are chosen: ports asked for one at a time may come back twice (a port freed
    by the first call is the kernel's next answer), which once gave a Consul agent one port for two roles.
    """
    with contextlib.ExitStack() as held:
        ports: list[int] = []
        while len(ports) < count:
            sock = held.enter_context(contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)))
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            if port not in exclude:
                ports.append(port)
        return ports


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll `predicate` until it returns a truthy value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # keep polling; report the last error on timeout
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_error!r})")


def is_live_listener(pid: int) -> bool:
    """Whether a process is an instance's live server, master or worker (messenger/live_listener.py forks it from
    the WSGI master, so its command line is the master's; it names itself in its comm)."""
    try:
        return Path(f"/proc/{pid}/comm").read_bytes().strip() == LIVE_PROCESS_NAME
    except FileNotFoundError:
        return False


def http_get(url: str, timeout: float = 5.0, headers: dict | None = None) -> tuple[int, bytes, dict]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def run_command(
    argv: list[str], *, env: dict, what: str, check: bool = True, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run `argv` to completion with exactly `env`, its output captured; with `check`, fail the test naming
    `what` and showing the output unless it exits 0."""
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"{what} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result  # fmt: skip


def stop_process_group(process: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    """Signal a process started with `start_new_session=True` and its children; SIGKILL them after `timeout`."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


class ConsulAgent:
    """A real `consul agent -dev` on free loopback ports, owned by one test run."""

    def __init__(self, http_port: int | None = None):
        if not shutil.which("consul"):
            raise RuntimeError("consul is not installed: run `make system-deps`")
        self.http_port = http_port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="consul-test-"))
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self, timeout: float = 30) -> ConsulAgent:
        serf_lan, serf_wan, server = free_ports(3, exclude=(self.http_port,))
        ports = {
            "http": self.http_port,
            "dns": -1,
            "grpc": -1,
            "serf_lan": serf_lan,
            "serf_wan": serf_wan,
            "server": server,
        }
        config = self.dir / "ports.json"
        config.write_text(json.dumps({"ports": ports}))
        with open(self.dir / "agent.log", "ab") as log:
            self.process = subprocess.Popen(
                [
                    "consul",
                    "agent",
                    "-dev",
                    "-client",
                    "127.0.0.1",
                    "-bind",
                    "127.0.0.1",
                    "-config-file",
                    str(config),
                    "-data-dir",
                    str(self.dir / "data"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(self._leader_elected, timeout, what=f"consul agent on {self.address}")
        return self

    def _leader_elected(self) -> bool:
        if self.process and self.process.poll() is not None:
            raise RuntimeError(f"consul exited: {(self.dir / 'agent.log').read_text()[-2000:]}")
        status, body, _ = http_get(f"{self.url}/v1/status/leader", timeout=1)
        return status == 200 and body.strip() not in (b'""', b"")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    # Small helpers over the HTTP API, so tests read like what they check.
    def kv_get(self, key: str) -> str | None:
        status, body, _ = http_get(f"{self.url}/v1/kv/{key}?raw=true")
        return body.decode() if status == 200 else None

    def kv_put(self, key: str, value: str) -> None:
        request = urllib.request.Request(f"{self.url}/v1/kv/{key}", data=value.encode(), method="PUT")
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200

    def healthy_instances(self, service: str) -> list[dict]:
        status, body, _ = http_get(f"{self.url}/v1/health/service/{service}?passing=true")
        return json.loads(body) if status == 200 else []

    def catalog_instances(self, service: str) -> list[dict]:
        status, body, _ = http_get(f"{self.url}/v1/catalog/service/{service}")
        return json.loads(body) if status == 200 else []

    def checks(self, service: str) -> list[dict]:
        status, body, _ = http_get(f"{self.url}/v1/health/checks/{service}")
        return json.loads(body) if status == 200 else []
