"""The job runner: a migrator role that owns the schema, an application role that only reads and writes rows.

Everything here runs against a throwaway PostgreSQL cluster that checks passwords
(the machine's own cluster trusts every local login), with the roles made by
`infrastructure/sql/roles.sql` through the real `psql`, the jobs run as separate
`manage.py` processes with the migrator's credentials, and the service run as a
real gunicorn instance with the application role's.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from conversations.management.commands.seed import SEED_USERS
from core.db.job_lock import lock_key
from tests.support.infrastructure import CREATE_DB_JOB, Infrastructure
from tests.support.platform import PLATFORM
from tests.support.postgres import PG_BIN, ThrowawayPostgres
from tests.support.processes import REPO_ROOT, free_port, http_get, wait_until
from tests.support.service import ServiceProcess, job_env, manage, manage_command

pytestmark = pytest.mark.slow

ROLES_SQL = REPO_ROOT / "infrastructure" / "sql" / "roles.sql"
APP_USER, APP_PASSWORD = "messenger_app", "app-password-1"
MIGRATOR_USER, MIGRATOR_PASSWORD = "messenger_migrator", "migrator-password-1"


@dataclass
class Roles:
    cluster: ThrowawayPostgres

    def migrator_env(self, dbname: str, **extra: str) -> dict[str, str]:
        env = self.cluster.env(MIGRATOR_USER, MIGRATOR_PASSWORD, dbname)
        return {**env, "DB_APPLICATION_USER": APP_USER, **extra}

    def app_env(self, dbname: str, **extra: str) -> dict[str, str]:
        return {**self.cluster.env(APP_USER, APP_PASSWORD, dbname), **extra}

    def as_migrator(self, dbname: str) -> psycopg.Connection:
        return self.cluster.connect(MIGRATOR_USER, MIGRATOR_PASSWORD, dbname)

    def as_app(self, dbname: str) -> psycopg.Connection:
        return self.cluster.connect(APP_USER, APP_PASSWORD, dbname)

    def job(self, dbname: str, *args: str, **extra: str) -> subprocess.CompletedProcess:
        """A management command run by the migrator, as the migrator instance runs it."""
        return manage(*args, env=self.migrator_env(dbname, **extra))

    def create_db(self, name: str) -> subprocess.CompletedProcess:
        """The seed's first job: connect to the maintenance database, create CREATE_DB_NAME."""
        return self.job("postgres", "create_db", CREATE_DB_NAME=name)


# What messenger-db-deploy.sh writes: its commit-time settings, where the local runtime's database listens.
DB_KEYS = {
    PLATFORM["KV_DB_HOST"]: "127.0.0.1",
    PLATFORM["KV_DB_APPLICATION_USER"]: PLATFORM["POSTGRES_APPLICATION_USER"],
    PLATFORM["KV_DB_APPLICATION_PASSWORD"]: PLATFORM["POSTGRES_APPLICATION_PASSWORD"],
    PLATFORM["KV_DB_MIGRATOR_USER"]: PLATFORM["POSTGRES_MIGRATOR_USER"],
    PLATFORM["KV_DB_MIGRATOR_PASSWORD"]: PLATFORM["POSTGRES_MIGRATOR_PASSWORD"],
}


@dataclass
class LoadBalancerView:
    """The local runtime's load balancer, seen from outside: what it routes to, and a request through it."""

    state_dir: Path
    port: int

    def routed(self) -> list[str]:
        status = self.state_dir / "load-balancer" / "nginx" / "status.json"  # written by the watcher
        return sorted(json.loads(status.read_text())["instances"])

    def get(self, path: str, headers: dict | None = None) -> tuple[int, bytes, dict]:
        return http_get(f"http://127.0.0.1:{self.port}{path}", headers=headers)


def apply_roles_sql(
    cluster, *, app=(APP_USER, APP_PASSWORD), migrator=(MIGRATOR_USER, MIGRATOR_PASSWORD), db_name: str | None = None
) -> subprocess.CompletedProcess:
    """What messenger-db-deploy.sh does: the roles file through psql, as the cluster's superuser."""
    variables = {
        "app_user": app[0],
        "app_password": app[1],
        "migrator_user": migrator[0],
        "migrator_password": migrator[1],
    }
    if db_name:
        variables["db_name"] = db_name
    args = [arg for name, value in variables.items() for arg in ("-v", f"{name}={value}")]
    return cluster.psql("-v", "ON_ERROR_STOP=1", *args, "-f", str(ROLES_SQL))


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def dump(cluster, dbname: str, *options: str) -> str:
    """pg_dump of the whole database (schema, privileges and rows), as the superuser."""
    env = job_env(cluster.env(dbname=dbname))
    result = subprocess.run(
        [str(PG_BIN / "pg_dump"), "--no-comments", *options], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    # \restrict lines carry a random key per run (pg_dump's psql-injection guard).
    return "".join(
        line
        for line in result.stdout.splitlines(keepends=True)
        if not line.startswith(("\\restrict ", "\\unrestrict "))
    )


def privileges(cluster, dbname: str) -> dict:
    """Every access-control list that roles.sql and `migrate` set: database, schema, defaults, legacy tables."""
    with cluster.connect(dbname=dbname) as conn:
        return {
            "database": conn.execute("SELECT datacl::text FROM pg_database WHERE datname = %s", [dbname]).fetchone(),
            "schema": conn.execute("SELECT nspacl::text FROM pg_namespace WHERE nspname = 'public'").fetchone(),
            "defaults": conn.execute(
                "SELECT pg_get_userbyid(defaclrole), defaclobjtype, defaclacl::text FROM pg_default_acl ORDER BY 1, 2"
            ).fetchall(),
            "tables": conn.execute(
                "SELECT relname, relacl::text FROM pg_class WHERE relname LIKE 'legacy%%' ORDER BY relname"
            ).fetchall(),
        }


def new_db_name(purpose: str) -> str:
    return f"{purpose}_{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def roles(throwaway_postgres) -> Roles:
    ok(apply_roles_sql(throwaway_postgres))
    return Roles(throwaway_postgres)


@pytest.fixture(scope="module")
def migrated_db(roles) -> str:
    """A database made by the migrator job exactly as the seed runs it: create_db, migrate, seed."""
    name = new_db_name("messenger")
    ok(roles.create_db(name))
    ok(roles.job(name, "migrate", "--no-input"))
    ok(roles.job(name, "seed"))
    return name


@pytest.fixture
def created_db(roles) -> str:
    """A database the migrator created but has not migrated."""
    name = new_db_name("fresh")
    ok(roles.create_db(name))
    return name


# --- the roles ---------------------------------------------------------------


def test_roles_sql_makes_a_login_only_application_role_and_a_non_superuser_migrator(roles, throwaway_postgres):
    with throwaway_postgres.connect() as conn:
        rows = conn.execute(
            "SELECT rolname, rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls "
            "FROM pg_roles WHERE rolname IN (%s, %s) ORDER BY rolname",
            [APP_USER, MIGRATOR_USER],
        ).fetchall()
    assert rows == [
        (APP_USER, True, False, False, False, False, False),
        (MIGRATOR_USER, True, False, True, False, False, False),
    ]


def test_roles_sql_run_again_creates_nothing_and_sets_the_new_passwords(throwaway_postgres):
    app, migrator = ("rerun_app", "first-app"), ("rerun_migrator", "first-migrator")
    first = ok(apply_roles_sql(throwaway_postgres, app=app, migrator=migrator))
    assert first.stdout.count("CREATE ROLE") == 2

    again = ok(
        apply_roles_sql(throwaway_postgres, app=(app[0], "second-app"), migrator=(migrator[0], "second-migrator"))
    )
    assert "CREATE ROLE" not in again.stdout
    throwaway_postgres.connect(app[0], "second-app").close()
    throwaway_postgres.connect(migrator[0], "second-migrator").close()
    with pytest.raises(psycopg.OperationalError, match=f'password authentication failed for user "{app[0]}"'):
        throwaway_postgres.connect(app[0], "first-app")


def test_roles_sql_refuses_one_role_for_both_jobs(throwaway_postgres):
    result = apply_roles_sql(throwaway_postgres, app=("same_role", "x"), migrator=("same_role", "y"))
    assert result.returncode == 3
    assert "app_user and migrator_user must be two different roles" in result.stderr


def test_roles_sql_hands_an_existing_database_to_the_migrator(roles, throwaway_postgres):
    """A database made before the roles existed (owned by the superuser) becomes the migrator's to migrate."""
    name = new_db_name("legacy")
    with throwaway_postgres.connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    with throwaway_postgres.connect(dbname=name) as conn:
        conn.execute("CREATE TABLE legacy_notes (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, body text)")
        conn.execute("CREATE SEQUENCE legacy_counter")

    ok(apply_roles_sql(throwaway_postgres, db_name=name))

    with throwaway_postgres.connect(dbname=name) as conn:
        owners = conn.execute(
            "SELECT (SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()), "
            "(SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'public'), "
            "array_agg(c.relname || ':' || pg_get_userbyid(c.relowner) ORDER BY c.relname) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'S')"
        ).fetchone()
    assert owners == (
        MIGRATOR_USER,
        MIGRATOR_USER,
        [
            f"legacy_counter:{MIGRATOR_USER}",
            f"legacy_notes:{MIGRATOR_USER}",
            f"legacy_notes_id_seq:{MIGRATOR_USER}",
        ],
    )
    with roles.as_app(name) as conn:  # usable at once, before any migration
        conn.execute("INSERT INTO legacy_notes (body) VALUES ('kept')")
        assert conn.execute("SELECT body FROM legacy_notes").fetchall() == [("kept",)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DROP TABLE legacy_notes")
    # roles.sql gave what `migrate` gives: migrating adds Django's tables and changes no privilege.
    before = privileges(throwaway_postgres, name)
    ok(roles.job(name, "migrate", "--no-input"))
    assert privileges(throwaway_postgres, name) == before
    with roles.as_app(name) as conn:
        assert conn.execute("SELECT count(*) FROM django_migrations").fetchone()[0] > 0


# --- the migrator job ----------------------------------------------------------


def test_migrator_job_creates_migrates_and_seeds_a_fresh_database_and_a_rerun_changes_nothing(
    roles, throwaway_postgres
):
    name = new_db_name("job")
    created = ok(roles.create_db(name))
    assert f"Created database '{name}'." in created.stdout
    migrated = ok(roles.job(name, "migrate", "--no-input"))
    assert "Applying conversations.0001_initial... OK" in migrated.stdout
    assert f"Application role '{APP_USER}' may read and write rows in" in migrated.stdout
    seeded = ok(roles.job(name, "seed"))
    assert "Seed users: 3 created, 0 already present (3 users in all)." in seeded.stdout

    with throwaway_postgres.connect(dbname=name) as conn:
        assert conn.execute("SELECT id, name FROM users ORDER BY id").fetchall() == list(SEED_USERS)
        owners = conn.execute(
            "SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' "
            "UNION SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
        ).fetchall()
    assert owners == [(MIGRATOR_USER,)]
    before = dump(throwaway_postgres, name)

    assert "already exists; left as it is" in ok(roles.create_db(name)).stdout
    assert "No migrations to apply." in ok(roles.job(name, "migrate", "--no-input")).stdout
    assert "Seed users: 0 created, 3 already present (3 users in all)." in ok(roles.job(name, "seed")).stdout
    assert dump(throwaway_postgres, name) == before


def test_migrator_job_with_a_wrong_password_fails_with_a_clear_message(roles, migrated_db):
    result = roles.job(migrated_db, "migrate", "--no-input", PGPASSWORD="not-the-password")
    assert result.returncode == 1
    assert f"Cannot connect to PostgreSQL database '{migrated_db}'" in result.stderr
    assert f'password authentication failed for user "{MIGRATOR_USER}"' in result.stderr
    assert "Traceback" not in result.stderr


def test_migrate_refuses_an_application_role_that_does_not_exist(roles, migrated_db):
    result = roles.job(migrated_db, "migrate", "--no-input", DB_APPLICATION_USER="nobody_here")
    assert result.returncode == 1
    assert "The application role 'nobody_here' (DB_APPLICATION_USER) does not exist" in result.stderr


# --- what the application role may do ---------------------------------------------

DDL_ATTEMPTS = {
    "create table": "CREATE TABLE intruder (id int)",
    "create temporary table": "CREATE TEMPORARY TABLE intruder (id int)",
    "create schema": "CREATE SCHEMA intruder",
    "create index": "CREATE INDEX intruder ON users (name)",
    "alter table": "ALTER TABLE users ADD COLUMN intruder int",
    "drop table": "DROP TABLE messages",
    "truncate": "TRUNCATE users CASCADE",
    "create database": "CREATE DATABASE intruder",
    "create role": "CREATE ROLE intruder",
}


@pytest.mark.parametrize("statement", DDL_ATTEMPTS.values(), ids=DDL_ATTEMPTS.keys())
def test_application_role_cannot_change_the_schema(roles, migrated_db, statement):
    with roles.as_app(migrated_db) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (len(SEED_USERS),)


def test_application_role_reads_and_writes_rows_through_the_api(roles, migrated_db, throwaway_postgres, tmp_path):
    service = ServiceProcess(roles.app_env(migrated_db, REQUIRE_MIGRATED_DB="true"), tmp_path / "app.log").start()
    try:
        status, conversation = service.request("POST", "/conversations", {"participant_ids": [1, 3]})
        assert status == 201, conversation
        conversation_id = conversation["conversation"]["id"]
        status, posted = service.request(
            "POST",
            f"/conversations/{conversation_id}/messages",
            {"content": "written by the application role"},
            user_id=3,
        )
        assert status == 201, posted
        assert posted["message"] | {"id": None, "inserted_at": None} == {
            "id": None,
            "inserted_at": None,
            "content": "written by the application role",
            "index": 1,
            "user_id": 3,
            "username": "Flambaravo Chortleblatt",
            "conversation_id": conversation_id,
        }
        status, listed = service.request("GET", f"/conversations/{conversation_id}/messages")
        assert status == 200
        assert [(m["content"], m["index"], m["user_id"]) for m in listed["messages"]] == [
            ("written by the application role", 1, 3)
        ]
        assert (
            service.request("POST", f"/conversations/{conversation_id}/view_horizon", {"index": 1}, user_id=1)[0] == 204
        )
    finally:
        service.stop()
    with throwaway_postgres.connect(dbname=migrated_db) as conn:
        rows = conn.execute(
            "SELECT m.content, m.index, uc.user_id, uc.last_viewed_index FROM messages m "
            "JOIN users_channels uc ON uc.channel_id = m.channel_id WHERE m.channel_id = %s ORDER BY uc.user_id",
            [conversation_id],
        ).fetchall()
    assert rows == [("written by the application role", 1, 1, 1), ("written by the application role", 1, 3, 0)]


def test_a_table_the_migrator_creates_later_is_usable_by_the_application_role_without_a_grant(roles, migrated_db):
    """Default privileges: whatever the migrator creates, by a later migration or by hand, the app can use."""
    with roles.as_migrator(migrated_db) as conn:
        conn.execute("CREATE TABLE later_feature (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, note text)")
        conn.execute("CREATE TABLE later_serial (id serial PRIMARY KEY, note text)")
    try:
        with roles.as_app(migrated_db) as conn:
            for table in ("later_feature", "later_serial"):
                conn.execute(f"INSERT INTO {table} (note) VALUES ('a'), ('b')")
                conn.execute(f"UPDATE {table} SET note = 'c' WHERE note = 'b'")
                conn.execute(f"DELETE FROM {table} WHERE note = 'a'")
                assert conn.execute(f"SELECT id, note FROM {table}").fetchall() == [(2, "c")]
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("DROP TABLE later_feature")
    finally:
        with roles.as_migrator(migrated_db) as conn:
            conn.execute("DROP TABLE later_feature, later_serial")


def test_a_new_model_migration_needs_no_manual_grant(roles, created_db, tmp_path):
    """A real Django migration adding a model, run by the migrator: the application role can use its table."""
    package = tmp_path / "late_feature"
    (package / "migrations").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "migrations" / "__init__.py").write_text("")
    (package / "models.py").write_text(
        textwrap.dedent("""
        from django.db import models

        class Note(models.Model):
            body = models.TextField()

            class Meta:
                app_label = "late_feature"
                db_table = "late_notes"
    """)
    )
    (package / "migrations" / "0001_initial.py").write_text(
        textwrap.dedent("""
        from django.db import migrations, models

        class Migration(migrations.Migration):
            initial = True
            dependencies = []
            operations = [
                migrations.CreateModel(
                    name="Note",
                    fields=[("id", models.BigAutoField(primary_key=True, serialize=False)),
                            ("body", models.TextField())],
                    options={"db_table": "late_notes"},
                ),
            ]
    """)
    )
    (tmp_path / "late_settings.py").write_text(
        "from messenger.settings import *  # noqa: F403\nINSTALLED_APPS = [*INSTALLED_APPS, 'late_feature']  # noqa\n"
    )
    ok(
        roles.job(
            created_db,
            "migrate",
            "--no-input",
            DJANGO_SETTINGS_MODULE="late_settings",
            PYTHONPATH=f"{tmp_path}:{REPO_ROOT}",
        )
    )
    with roles.as_app(created_db) as conn:
        conn.execute("INSERT INTO late_notes (body) VALUES ('no grant needed')")
        assert conn.execute("SELECT id, body FROM late_notes").fetchall() == [(1, "no grant needed")]


def test_migrate_gives_back_privileges_that_were_taken_away(roles, migrated_db):
    """The safety net: every `migrate` grants on what exists, whatever happened to it in between."""
    with roles.as_migrator(migrated_db) as conn:
        conn.execute(f"REVOKE ALL ON users FROM {APP_USER}")
    with roles.as_app(migrated_db) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT count(*) FROM users")
    ok(roles.job(migrated_db, "migrate", "--no-input"))
    with roles.as_app(migrated_db) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (len(SEED_USERS),)


# --- two migrators at once ----------------------------------------------------------


def hold_job_lock(roles: Roles, dbname: str) -> psycopg.Connection:
    """Take the schema-jobs lock as another migrator would (its session is named test-holder)."""
    conn = roles.as_migrator(dbname)
    conn.execute("SET application_name = 'test-holder'")
    assert conn.execute("SELECT pg_try_advisory_lock(%s)", [lock_key()]).fetchone() == (True,)
    return conn


def test_two_concurrent_migrate_runs_both_finish_and_the_schema_is_right(
    roles, created_db, migrated_db, throwaway_postgres, tmp_path
):
    """Both start while the lock is held, both wait; then one migrates and the other finds nothing to do."""
    holder = hold_job_lock(roles, created_db)
    runs = []
    for number in (1, 2):
        out, err = tmp_path / f"migrate-{number}.out", tmp_path / f"migrate-{number}.err"
        with open(out, "w") as stdout, open(err, "w") as stderr:
            process = subprocess.Popen(
                manage_command("migrate", "--no-input"),
                cwd=REPO_ROOT,
                env=job_env(roles.migrator_env(created_db)),
                stdout=stdout,
                stderr=stderr,
            )
        runs.append((process, out, err))
    try:
        for _, _, err in runs:
            wait_until(
                lambda err=err: "Waiting for the schema-jobs lock" in err.read_text(),
                timeout=60,
                what="both migrators to wait for the lock",
            )
        assert "held by server pid" in runs[0][2].read_text() and "(test-holder," in runs[0][2].read_text()
    finally:
        holder.close()
    for process, _, _ in runs:
        assert process.wait(timeout=120) == 0
    outputs = [out.read_text() for _, out, _ in runs]
    assert sorted("Applying conversations.0001_initial... OK" in output for output in outputs) == [False, True]
    assert sorted("No migrations to apply." in output for output in outputs) == [False, True]
    # The same schema, privileges included, as a database migrated once, alone.
    assert dump(throwaway_postgres, created_db, "--schema-only") == dump(
        throwaway_postgres, migrated_db, "--schema-only"
    )


@pytest.mark.parametrize("job", ["migrate", "seed"])
def test_a_job_gives_up_with_a_clear_message_when_another_migrator_keeps_the_lock(roles, migrated_db, job):
    holder = hold_job_lock(roles, migrated_db)
    try:
        started = time.monotonic()
        result = roles.job(migrated_db, job, "--lock-timeout", "1")
        elapsed = time.monotonic() - started
    finally:
        holder.close()
    assert result.returncode == 1
    assert (
        f"Gave up after 1s: another migrator job holds the schema-jobs lock of database '{migrated_db}' (server pid "
    ) in result.stderr
    assert "(test-holder, connected " in result.stderr
    assert f"Let it finish, or stop it, and run {job} again." in result.stderr
    assert elapsed < 30


# --- serving instances ----------------------------------------------------------------


def test_serving_instance_refuses_to_start_on_an_unmigrated_database(roles, created_db, tmp_path):
    service = ServiceProcess(roles.app_env(created_db, REQUIRE_MIGRATED_DB="true"), tmp_path / "serve.log")
    status, log = service.run_until_exit()
    assert status == 1
    port = roles.cluster.port
    assert (
        f"Error: database '{created_db}' at 127.0.0.1:{port} as '{APP_USER}' has unapplied migrations "
        "(contenttypes.0001_initial, "
    ) in log
    assert "run the migrator job: infrastructure/messenger-db-migrator-deploy.sh" in log
    assert "Listening at" not in log


def test_serving_instance_with_a_wrong_password_exits_with_a_clear_message(roles, migrated_db, tmp_path):
    env = roles.app_env(migrated_db, REQUIRE_MIGRATED_DB="true", PGPASSWORD="not-the-password")
    status, log = ServiceProcess(env, tmp_path / "serve.log").run_until_exit()
    assert status == 1
    assert f"Error: cannot check the migrations of database '{migrated_db}'" in log
    assert f'password authentication failed for user "{APP_USER}"' in log
    assert "Listening at" not in log


def test_the_migrator_instance_starts_on_an_unmigrated_database(roles, created_db, tmp_path):
    """REQUIRE_MIGRATED_DB=false: the instance that runs the migrations must come up before them."""
    service = ServiceProcess(roles.migrator_env(created_db, REQUIRE_MIGRATED_DB="false"), tmp_path / "migrator.log")
    service.start()
    try:
        assert service.process.poll() is None
    finally:
        assert service.stop() == 0


# --- the seed's sequence, through the deploy scripts ----------------------------------


@pytest.fixture
def seed_cluster():
    """A password-checking cluster whose superuser password is the db script's POSTGRES_PASSWORD setting."""
    cluster = ThrowawayPostgres(superuser_password="postgres").start()
    try:
        yield cluster
    finally:
        cluster.stop()


def test_the_seeds_migration_sequence_through_the_scripts_keeps_the_migrator_out_of_the_load_balancer(
    seed_cluster, consul_agent, tmp_path
):
    """db deploy, migrator deploy, create_db / migrate / seed inside it, stop it; then serving instances."""
    infra = Infrastructure(
        consul_agent,
        tmp_path / "state",
        "messenger",
        LOCAL_PGPORT=str(seed_cluster.port),
        CONSUL_CHECK_INTERVAL="1s",
        CONSUL_RETRY_INTERVAL="1s",
        SHUTDOWN_DRAIN_SECONDS="0",
    )
    lb = LoadBalancerView(tmp_path / "state", free_port())
    try:
        infra.platform_and_database()
        assert {key: consul_agent.kv_get(key) for key in DB_KEYS} == DB_KEYS
        infra.run("messenger-load-balancer-deploy.sh", LB_PORT=str(lb.port), LB_BIND="127.0.0.1")
        wait_until(lambda: lb.routed() == [], timeout=30, what="the load balancer's first (empty) upstream list")

        # Before the migration a serving instance refuses to start, and says what to do.
        refused = infra.run("messenger-deploy.sh", check=False)
        assert refused.returncode == 1
        assert (
            f"Error: database 'messenger' at 127.0.0.1:{seed_cluster.port} as 'messenger' does not exist: "
            "run the migrator job"
        ) in refused.stderr

        assert infra.run("messenger-db-migrator-deploy.sh").stdout == "messenger-migrator\n"
        [migrator] = wait_until(
            lambda: consul_agent.catalog_instances("messenger-migrator"),
            timeout=30,
            what="the migrator in Consul's catalog",
        )

        created = infra.run(
            "messenger-exec.sh",
            *CREATE_DB_JOB,
        )
        assert created.stdout == "Created database 'messenger'.\n"
        migrated = infra.run("messenger-exec.sh", "messenger-migrator", "python", "manage.py", "migrate", "--no-input")
        assert "Application role 'messenger' may read and write rows in" in migrated.stdout
        seeded = infra.run("messenger-exec.sh", "messenger-migrator", "python", "manage.py", "seed")
        assert seeded.stdout == "Seed users: 3 created, 0 already present (3 users in all).\n"

        # Its database exists now, so the migrator passes its check: in Consul, but not as `messenger`.
        infra.wait_passing(1, service="messenger-migrator")
        assert consul_agent.catalog_instances("messenger") == []
        assert lb.routed() == [] and lb.get("/health")[0] == 503
        infra.run("messenger-stop.sh", "--service", "messenger-migrator", "messenger-migrator")
        assert consul_agent.catalog_instances("messenger-migrator") == []

        instance = infra.deploy()
        assert infra.instance_environment(instance)["PGUSER"] == "messenger"
        address = f"127.0.0.1:{infra.port(instance)}"
        wait_until(lambda: lb.routed() == [address], timeout=30, what="the load balancer to route to the instance")
        status, body, headers = lb.get("/conversations", {"User-Id": "1"})
        # A read goes to the instance's live listener, at the port its Consul entry advertises; Upstream-Host
        # names the instance as the catalog does, whichever of its ports answered.
        (entry,) = consul_agent.catalog_instances("messenger")
        assert entry["ServiceMeta"]["live_port"] != str(infra.port(instance))
        assert (status, json.loads(body), headers["Upstream-Host"]) == (200, {"conversations": []}, address)
        status, _, headers = lb.get("/users")
        assert (status, headers["Upstream-Host"]) == (200, address)
        assert (
            f"127.0.0.1:{migrator['ServicePort']}"
            not in (tmp_path / "state").joinpath("load-balancer", "nginx", "messenger-upstream.conf").read_text()
        )
        with seed_cluster.connect(dbname="messenger") as conn:
            assert conn.execute(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'messenger'"
            ).fetchone() == ("messenger_migrator",)
    finally:
        infra.run("messenger-load-balancer-stop.sh", check=False)
        infra.cleanup()
