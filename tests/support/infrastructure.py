"""The deploy scripts of `infrastructure/`, run by tests the way an operator runs them.

Each `Infrastructure` runs the scripts in the local-process runtime against one
Consul agent, with a state folder of its own, so tests never see each other's
instances. The scripts get a clean environment (nothing leaks from pytest's own
PG* variables): what they need comes from Consul KV, as in production.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import psycopg
from psycopg import sql

from tests.support.processes import REPO_ROOT, run_command, wait_until

INFRA = REPO_ROOT / "infrastructure"


# The migrator job's first command as the deploy scripts run it (infrastructure/stack.sh): create
# the database, connected to `postgres`, through messenger-exec.sh in the migrator instance.
CREATE_DB_JOB = [
    "-e", "PGDATABASE=postgres", "-e", "CREATE_DB_NAME=messenger", "messenger-migrator", "python", "manage.py", "create_db",
]  # fmt: skip


# The databases this process's tests created on the machine's PostgreSQL: dropped when its session ends
# (`drop_created_databases`, from the root conftest.py), so a run leaves none behind.
CREATED_DATABASES: set[str] = set()


def migrated_database(name: str) -> str:
    """Create database `name` on the machine's PostgreSQL if missing and migrate it; return the name.

    It is dropped when the test session ends."""
    CREATED_DATABASES.add(name)
    with psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "APP_ENV": "test",
        "PGHOST": "127.0.0.1",
        "PGUSER": "postgres",
        "PGDATABASE": name,
    }
    result = subprocess.run(
        [str(REPO_ROOT / ".venv/bin/python"), "manage.py", "migrate", "--no-input"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return name


def _drop(*names: str) -> None:
    with psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def fresh_database(name: str) -> str:
    """No database `name` (what an earlier run left is dropped, its connections ended); the caller's test then
    creates it, and it is dropped when the session ends. Returns the name."""
    CREATED_DATABASES.add(name)
    _drop(name)
    return name


def drop_created_databases() -> list[str]:
    """Drop every database this process's tests created (`CREATED_DATABASES`); returns their names."""
    dropped = sorted(CREATED_DATABASES)
    if dropped:
        _drop(*dropped)
    CREATED_DATABASES.clear()
    return dropped


class Infrastructure:
    """Runs infrastructure/*.sh in the local runtime against `consul` with a private state folder."""

    def __init__(self, consul, state_dir: Path, db_name: str, **env: str):
        self.consul = consul
        self.state_dir = state_dir
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "MESSENGER_RUNTIME": "local",
            "MESSENGER_STATE_DIR": str(state_dir),
            "MESSENGER_DB_NAME": db_name,
            "CONSUL_HOST": "127.0.0.1",
            "CONSUL_PORT": str(consul.http_port),
            **env,
        }

    def run(
        self, script: str, *args: str, check: bool = True, timeout: float = 120, **env: str
    ) -> subprocess.CompletedProcess:
        return run_command([str(INFRA / script), *args], cwd=REPO_ROOT, env={**self.env, **env}, what=script,
                           check=check, timeout=timeout)  # fmt: skip

    def start(self, script: str, *args: str, **env: str) -> subprocess.Popen:
        """Run a script in the background (for a test that watches what happens meanwhile)."""
        return subprocess.Popen(
            [str(INFRA / script), *args],
            cwd=REPO_ROOT,
            env={**self.env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def platform_and_database(self) -> None:
        """What must exist before an instance can deploy: the platform's and the database's KV keys."""
        self.run("platform-deploy.sh")
        self.run("messenger-db-deploy.sh")

    def deploy(self, **env: str) -> str:
        """One more messenger instance; returns its id (`messenger-<port>`)."""
        return self.run("messenger-deploy.sh", check=True, timeout=120, **env).stdout.strip()

    def pid(self, instance_id: str, kind: str = "messenger") -> int:
        return int((self.state_dir / kind / f"{instance_id}.pid").read_text())

    @staticmethod
    def port(instance_id: str) -> int:
        return int(instance_id.rsplit("-", 1)[1])

    def instance_environment(self, instance_id: str) -> dict[str, str]:
        """The environment the running instance's process really has (from /proc)."""
        raw = Path(f"/proc/{self.pid(instance_id)}/environ").read_bytes()
        return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)

    def passing(self, service: str = "messenger") -> dict[str, dict]:
        """Passing instances of `service` in Consul's health API, by service id."""
        return {entry["Service"]["ID"]: entry["Service"] for entry in self.consul.healthy_instances(service)}

    def wait_passing(self, count: int, timeout: float = 30, service: str = "messenger") -> dict[str, dict]:
        return wait_until(
            lambda: len(self.passing(service)) == count and self.passing(service),
            timeout,
            what=f"{count} passing {service} instance(s)",
        )

    def cleanup(self) -> None:
        """Stop every instance gracefully; kill whatever outlives that."""
        for kind_dir in sorted(self.state_dir.glob("*")):
            if kind_dir.name != "platform" and kind_dir.is_dir():
                self.run("messenger-stop.sh", "--service", kind_dir.name, "--all", check=False)
        if (self.state_dir / "platform").is_dir():
            self.run("platform-stop.sh", check=False)
        for pidfile in self.state_dir.glob("*/*.pid"):
            pid = int(pidfile.read_text())
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue  # gone already
            if b"gunicorn" in command or b"consul" in command:  # never a reused pid of someone else's
                os.killpg(pid, signal.SIGKILL)
