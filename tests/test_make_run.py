"""`make run` as a user runs it: the embedded PostgreSQL, a request through its port, Ctrl+C, and a second run.

The make process gets a session of its own, so the SIGINT sent to its process
group is what a terminal sends on Ctrl+C: make, the embedded server's runner
(core/db/embedded.py) and gunicorn all receive it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import psutil

from tests.support.processes import REPO_ROOT, free_port, http_get, wait_until
from tests.support.service import call

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class MakeRun:
    """One `make run` in the foreground of its own session, with no PostgreSQL settings in its environment."""

    def __init__(self, data_dir: Path, port: int, log_path: Path):
        self.env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/"), "DATA_DIR": str(data_dir),
                    "PORT": str(port)}  # fmt: skip
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                ["make", "run"],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(self._healthy, 120, what=f"make run answering on {self.url}")

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"make run exited {self.process.returncode}: {self.log_path.read_text()[-3000:]}")
        try:
            return http_get(f"{self.url}/health", timeout=1)[0] == 200
        except OSError:
            return False

    def ctrl_c(self) -> int:
        os.killpg(self.process.pid, signal.SIGINT)
        return self.process.wait(timeout=60)


def _servers_on(pgdata: Path) -> list[psutil.Process]:
    """PostgreSQL processes still running on this data folder."""
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        if process.info["name"] == "postgres" and str(pgdata) in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


def test_make_run_serves_on_the_embedded_postgresql_stops_cleanly_and_keeps_its_data(tmp_path):
    data_dir, port = tmp_path / "data", free_port()
    pgdata = data_dir / "postgres"

    first = MakeRun(data_dir, port, tmp_path / "first.log")
    created = call(first.url, "POST", "/conversations", {"participant_ids": [1, 2]})
    posted = call(first.url, "POST", "/conversations/1/messages", {"content": "kept"}, {"User-Id": "1"})
    assert first.ctrl_c() == -signal.SIGINT  # make dies of the SIGINT, as at a terminal

    assert created.status == 201
    assert created.json() == {"conversation": {"id": 1, "inserted_at": created.json()["conversation"]["inserted_at"]}}
    assert TIMESTAMP.match(created.json()["conversation"]["inserted_at"])
    message = posted.json()["message"]
    assert posted.status == 201
    assert message == {"id": 1, "content": "kept", "index": 1, "user_id": 1, "username": "James Blanderphone",
                       "conversation_id": 1, "inserted_at": message["inserted_at"]}  # fmt: skip
    log = first.log_path.read_text()
    assert "embedded PostgreSQL: created database 'messenger'" in log
    assert "Seed users: 3 created, 0 already present (3 users in all)." in log
    assert log.rstrip().endswith("embedded PostgreSQL: stopped")
    # A clean stop: the server checkpointed and exited, and left no pid file or process behind.
    assert (pgdata / "log").read_text().rstrip().endswith("database system is shut down")
    assert not (pgdata / "postmaster.pid").exists()
    assert _servers_on(pgdata) == []

    second = MakeRun(data_dir, port, tmp_path / "second.log")
    page = call(second.url, "GET", "/conversations/1/messages")
    listing = call(second.url, "GET", "/conversations", headers={"User-Id": "1"})
    again = call(second.url, "POST", "/conversations", {"participant_ids": [1, 2]})
    assert second.ctrl_c() == -signal.SIGINT

    assert page.status == 200
    assert page.json() == {"messages": [{"id": 1, "content": "kept", "user_id": 1, "channel_id": 1, "index": 1,
                                         "inserted_at": message["inserted_at"], "username": "James Blanderphone"}]}  # fmt: skip
    # The hot routes' statements, on the wheel's PostgreSQL (18) as on the deployed one.
    assert (listing.status, listing.json()) == (
        200,
        {
            "conversations": [
                {"id": 1, "inserted_at": created.json()["conversation"]["inserted_at"], "name": "Normalavian Ropetoter"}
            ]
        },
    )
    assert (again.status, again.json()) == (
        400,
        {"error": "A conversation between these two users already exists with id 1"},
    )
    log = second.log_path.read_text()
    assert "created database" not in log
    assert "Seed users: 0 created, 3 already present (3 users in all)." in log
    assert "No migrations to apply." in log
    assert not (pgdata / "postmaster.pid").exists()
    assert _servers_on(pgdata) == []
