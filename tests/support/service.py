"""Run the real service (gunicorn) as a subprocess on a free loopback port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.processes import REPO_ROOT, free_port, http_get, wait_until


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
            **env,
        }
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> "ServiceProcess":
        gunicorn = Path(sys.executable).with_name("gunicorn")
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [str(gunicorn), "-c", "messenger/gunicorn_conf.py", "messenger.wsgi"],
            cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_until(self._answers, timeout, what=f"service on port {self.port}")
        return self

    def _answers(self) -> bool:
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
