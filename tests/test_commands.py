"""Management commands as processes: the one-off jobs as the seed runs them, and start-up's refusal of a bad configuration."""

import os
import re
import subprocess
import sys
import uuid

import psycopg
import pytest

from conversations.management.commands.seed import SEED_USERS
from tests.support.processes import REPO_ROOT


def manage(*args, **env):
    full_env = {**os.environ, "APP_ENV": "test", **env}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=120
    )


def database_exists(name: str) -> bool:
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is not None


@pytest.fixture
def fresh_database_name():
    name = f"messenger_job_{uuid.uuid4().hex[:8]}"
    yield name
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_create_db_migrate_seed_build_a_fresh_database(fresh_database_name):
    created = manage("create_db", PGDATABASE="postgres", CREATE_DB_NAME=fresh_database_name)
    assert created.returncode == 0, created.stderr
    assert f"Created database '{fresh_database_name}'." in created.stdout
    assert database_exists(fresh_database_name)

    migrated = manage("migrate", "--no-input", PGDATABASE=fresh_database_name)
    assert migrated.returncode == 0, migrated.stderr
    seeded = manage("seed", PGDATABASE=fresh_database_name)
    assert seeded.returncode == 0, seeded.stderr
    assert "3 created, 0 already present" in seeded.stdout

    with psycopg.connect(host="127.0.0.1", user="postgres", dbname=fresh_database_name) as conn:
        rows = conn.execute("SELECT id, name FROM users ORDER BY id").fetchall()
    assert rows == list(SEED_USERS)

    again = manage("seed", PGDATABASE=fresh_database_name)
    assert "0 created, 3 already present" in again.stdout


def test_create_db_leaves_an_existing_database_alone(fresh_database_name):
    manage("create_db", PGDATABASE="postgres", CREATE_DB_NAME=fresh_database_name)
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname=fresh_database_name, autocommit=True) as conn:
        conn.execute("CREATE TABLE marker (id int)")
    again = manage("create_db", PGDATABASE="postgres", CREATE_DB_NAME=fresh_database_name)
    assert again.returncode == 0
    assert "already exists; left as it is (use --drop-existing to recreate it)" in again.stdout
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname=fresh_database_name) as conn:
        assert conn.execute("SELECT to_regclass('marker') IS NOT NULL").fetchone() == (True,)

    dropped = manage("create_db", "--drop-existing", PGDATABASE="postgres", CREATE_DB_NAME=fresh_database_name)
    assert dropped.returncode == 0, dropped.stderr
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname=fresh_database_name) as conn:
        assert conn.execute("SELECT to_regclass('marker') IS NULL").fetchone() == (True,)


def test_create_db_without_a_name_fails_with_a_clear_message():
    result = manage("create_db", PGDATABASE="postgres", CREATE_DB_NAME="")
    assert result.returncode == 1
    assert "Set CREATE_DB_NAME (or pass --name) to the database to create." in result.stderr


def _manage(*args, env_extra):
    env = {"PATH": "/usr/bin:/bin", "DATA_DIR": "var/test-config", **env_extra}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_startup_with_invalid_config_exits_non_zero_naming_each_problem():
    result = _manage("check", env_extra={"PORT": "70000", "AMQPPORT": "abc"})
    assert result.returncode == 2
    assert "Invalid configuration (2 problem(s))" in result.stderr
    assert "PORT: '70000' is invalid" in result.stderr
    assert "AMQPPORT: 'abc' is invalid" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_command_prints_values_and_masks_secrets():
    result = _manage("config", env_extra={"PGPASSWORD": "hunter2", "JSON_BODY_LIMIT": "27b", "APP_ENV": "test"})
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout
    assert re.search(r"^PGPASSWORD\s+\*{8}\s+\[environment\]", result.stdout, re.MULTILINE)
    assert re.search(r"^JSON_BODY_LIMIT\s+27b\s+\[environment\]", result.stdout, re.MULTILINE)
    assert result.stdout.startswith("environment: test")
