"""Run the real service (gunicorn) as a subprocess on a free loopback port."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tests.support.processes import REPO_ROOT, free_port, http_get, wait_until


@dataclass
class Answer:
    """An HTTP answer as the server sent it, and how long it took."""

    status: int
    body: bytes
    headers: dict[str, str]
    seconds: float

    def json(self):
        return json.loads(self.body)


def call(
    base_url: str, method: str, path: str, body: dict | None = None, headers: dict | None = None, timeout: float = 30
) -> Answer:
    """One JSON request to `base_url`, timed."""
    host, port = urlsplit(base_url).netloc.split(":")
    sent = {"Content-Type": "application/json", **(headers or {})}
    started = time.monotonic()
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=sent)
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    return Answer(response.status, raw, dict(response.getheaders()), time.monotonic() - started)


class ServiceProcess:
    """`gunicorn -c messenger/gunicorn_conf.py messenger.wsgi` with the given environment."""

    def __init__(self, env: dict[str, str], log_path: Path, port: int | None = None):
        self.port = port or free_port()
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "APP_ENV": "test",
            "BIND_HOST": "127.0.0.1",
            "PORT": str(self.port),
            "WEB_CONCURRENCY": "1",
            "WEB_THREADS": "2",
            # Most service tests need no tables (nor a database: with PGHOST unset one answers 503 on /health);
            # the tests of the start-up check itself pass "true".
            "REQUIRE_MIGRATED_DB": "false",
            **env,
        }
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self) -> subprocess.Popen:
        gunicorn = Path(sys.executable).with_name("gunicorn")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(gunicorn), "-c", "messenger/gunicorn_conf.py", "messenger.wsgi"],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self.process

    def start(self, timeout: float = 30) -> ServiceProcess:
        self._spawn()
        wait_until(self._answers, timeout, what=f"service on port {self.port}")
        return self

    def run_until_exit(self, timeout: float = 30) -> tuple[int, str]:
        """Start an instance that is expected to refuse to start; return (exit status, its log)."""
        process = self._spawn()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(signal.SIGKILL)
            raise AssertionError(
                f"the service did not exit within {timeout}s: {self.log_path.read_text()[-3000:]}"
            ) from None
        return process.returncode, self.log_path.read_text()

    def request(
        self, method: str, path: str, body: dict | None = None, user_id: int | None = None, timeout: float = 10
    ) -> tuple[int, dict | None]:
        """One JSON request to this instance: (status, decoded body or None)."""
        answer = call(self.url, method, path, body, {} if user_id is None else {"User-Id": str(user_id)}, timeout)
        return answer.status, json.loads(answer.body) if answer.body else None

    def _answers(self) -> bool:
        assert self.process is not None, "start() first"
        if self.process.poll() is not None:
            raise RuntimeError(f"service exited {self.process.returncode}: {self.log_path.read_text()[-3000:]}")
        status, _, _ = http_get(f"{self.url}/health", timeout=1)
        return status in (200, 503)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        return self.process.returncode if self.process else None


def manage_command(*args: str) -> list[str]:
    """The argv of `python manage.py ARGS` with this test run's interpreter."""
    return [sys.executable, "manage.py", *args]


def job_env(env: dict[str, str]) -> dict[str, str]:
    """A clean environment for a job: only PATH, APP_ENV=test and `env` (nothing leaks from pytest's PG*)."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "APP_ENV": "test", **env}


def manage(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a management command as the deploy scripts do: its own process, its own environment."""
    return subprocess.run(
        manage_command(*args), cwd=REPO_ROOT, env=job_env(env), capture_output=True, text=True, timeout=timeout
    )
