"""A throwaway PostgreSQL cluster that checks passwords, for tests of roles and credentials.

The machine's own cluster trusts every local connection, so a wrong password would
pass there. This one is made by `initdb` in a temporary folder, listens on a free
loopback port, and accepts nothing but scram-sha-256 password logins. Its roles
exist only inside it, so tests may create and drop roles without touching anyone
else's. PostgreSQL refuses to run as root: as root, the server commands run as the
`postgres` system user, which the Debian packages create.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg

from tests.support.processes import free_port

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))


class ThrowawayPostgres:
    """`initdb` + `pg_ctl start` on a free port with password auth; `stop()` removes everything."""

    superuser = "postgres"

    def __init__(self, superuser_password: str = "throwaway-superuser"):
        if not (PG_BIN / "initdb").exists():
            raise RuntimeError(f"{PG_BIN}/initdb not found: install postgresql-15 (or set PG_BIN)")
        self.superuser_password = superuser_password
        self.port = free_port()
        self.host = "127.0.0.1"
        self.dir = Path(tempfile.mkdtemp(prefix="throwaway-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            account = pwd.getpwnam("postgres")
            os.chown(self.dir, account.pw_uid, account.pw_gid)
        self.started = False

    def _run(self, *args: str, timeout: float) -> subprocess.CompletedProcess:
        command = [str(PG_BIN / args[0]), *args[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.dir)
        if result.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr}{result.stdout}\n{log}")
        return result

    def start(self, timeout: float = 60) -> ThrowawayPostgres:
        pwfile = self.dir / "superuser-password"
        pwfile.write_text(self.superuser_password + "\n")
        if self._as_postgres:
            shutil.chown(pwfile, "postgres")
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            self.superuser,
            f"--pwfile={pwfile}",
            "--auth-local=scram-sha-256",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
            timeout=timeout,
        )
        pwfile.unlink()
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses={self.host} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "-t",
            str(int(timeout)),
            "start",
            timeout=timeout + 5,
        )
        self.started = True
        return self

    def stop(self, timeout: float = 30) -> None:
        if self.started:
            self._run(
                "pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", str(int(timeout)), "stop", timeout=timeout + 5
            )
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)

    def env(self, user: str | None = None, password: str | None = None, dbname: str = "postgres") -> dict[str, str]:
        """libpq's variables for connecting as `user` (default: the superuser)."""
        user = user or self.superuser
        if password is None and user == self.superuser:
            password = self.superuser_password
        return {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": user,
            "PGPASSWORD": password or "",
            "PGDATABASE": dbname,
        }

    def connect(
        self, user: str | None = None, password: str | None = None, dbname: str = "postgres", autocommit: bool = True
    ) -> psycopg.Connection:
        env = self.env(user, password, dbname)
        return psycopg.connect(
            host=env["PGHOST"],
            port=env["PGPORT"],
            user=env["PGUSER"],
            password=env["PGPASSWORD"],
            dbname=dbname,
            autocommit=autocommit,
            connect_timeout=10,
        )

    def psql(
        self,
        *args: str,
        input: str | None = None,
        user: str | None = None,
        password: str | None = None,
        dbname: str = "postgres",
        timeout: float = 60,
    ) -> subprocess.CompletedProcess:
        """Run the real `psql` client (as a deploy script would) against this cluster."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **self.env(user, password, dbname)}
        return subprocess.run(
            ["psql", "-X", *args], input=input, env=env, capture_output=True, text=True, timeout=timeout
        )
