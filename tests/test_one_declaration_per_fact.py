"""Each fact of the topology is declared once (issue 20, point 2b), read from files, nothing run.

- The platform's facts (ports, passwords, Consul KV key names) live in docker/.env; compose, the swarm's
  override, the deploy scripts and pytest.ini name them as `${VAR}` and never state a value again.
- The service's own defaults live in core/config.py's schema; none of those files sets a setting to its
  schema default again (`JSON_BODY_LIMIT=100kb`, `CONSUL_CHECK_INTERVAL:-15s`): whoever starts an instance
  passes only what differs, and the service fills in the rest.

core/config.py is the schema's home, so only the second rule reads it: its PGPORT default (5432) is what the
service assumes of any PostgreSQL, not where this topology's database listens (that reaches it through Consul
KV from docker/.env's POSTGRES_PORT), and changing one never requires changing the other.
"""

import re

import pytest

from core.config import SCHEMA
from tests.support.platform import PLATFORM
from tests.support.processes import REPO_ROOT

READERS = sorted(
    [
        REPO_ROOT / "docker" / "compose.yaml",
        REPO_ROOT / "docker" / "compose.swarm.yaml",
        REPO_ROOT / "pytest.ini",
        *(REPO_ROOT / "infrastructure").glob("*.sh"),
    ]
)
# The kinds of fact named by their variable: a port, a password, a Consul KV key. (Role names such as
# `postgres` or `messenger` are also ordinary words of these files: the database, the service.)
GUARDED = re.compile(r"_PORT$|_PASSWORD$|^KV_")
# The superuser's password is its name (`postgres`, as the image's documentation has it), a word these files also
# use for the maintenance database: it stays declared once, but a literal search cannot tell the two apart.
UNGUARDABLE = {PLATFORM["POSTGRES_USER"]}
# CONSUL_HOST's default is the platform agent's host name, compose's service `consul-client`: a caller names it as
# it names any host it made, so compose and stack.sh state it beside that service.
NAMES_A_HOST = {"CONSUL_HOST"}


def code(path) -> str:
    """The file without its comment lines: a comment may say what a value is, in words or by example."""
    return "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))


def stated(value: str, text: str) -> list[str]:
    """Each line where `value` stands as a whole word (not inside `15672`, `messenger-db-host-x`), and not as a
    name given a variable's value (psql's `-v migrator_password=${POSTGRES_MIGRATOR_PASSWORD}`)."""
    word = re.compile(rf"(?<![\w.-]){re.escape(value)}(?![\w.-]|=\"?\$\{{)")
    return [line.strip() for line in text.splitlines() if word.search(line)]


def test_the_guarded_facts_are_declared_in_docker_env():
    names = {name for name in PLATFORM if GUARDED.search(name)}
    # Every Consul KV key of the contract, and the database's passwords, have their one home here.
    kv_keys = {PLATFORM[name] for name in names if name.startswith("KV_")}
    assert kv_keys == {
        "messenger-db-host",
        "messenger-db-port",
        "messenger-db-application-user",
        "messenger-db-password-never-do-this",
        "messenger-db-migrator-user",
        "messenger-db-migrator-password-never-do-this",
        "amqp-host",
        "amqp-port",
    }
    assert {"POSTGRES_PASSWORD", "POSTGRES_APPLICATION_PASSWORD", "POSTGRES_MIGRATOR_PASSWORD"} <= names
    assert {"POSTGRES_PORT", "RABBITMQ_PORT", "CONSUL_HTTP_PORT", "LB_CONTAINER_PORT", "LB_PORT"} <= names


@pytest.mark.parametrize("reader", READERS, ids=[str(p.relative_to(REPO_ROOT)) for p in READERS])
def test_no_file_restates_a_value_of_docker_env(reader):
    text = code(reader)
    restated = {
        f"{name}={value}": lines
        for name, value in PLATFORM.items()
        if GUARDED.search(name) and value not in UNGUARDABLE and (lines := stated(value, text))
    }
    assert not restated, f"{reader.name} states docker/.env's values again; name them as ${{VAR}}: {restated}"


def defaults_set(text: str) -> list[str]:
    """Each line that sets a setting of the schema to its default, in any of these files' syntaxes."""
    found = []
    for setting in SCHEMA:
        if setting.default is None or str(setting.default) == "" or setting.name in NAMES_A_HOST:
            continue
        # NAME=default (shell, pytest-env's D:NAME=...), NAME: default (YAML), ${NAME:-default} (shell, compose).
        assignment = rf"\b{setting.name}(=|:\s*[\"']?|:-){re.escape(str(setting.default))}[\"']?(?![\w.])"
        found += [line.strip() for line in text.splitlines() if re.search(assignment, line)]
    return found


@pytest.mark.parametrize("reader", READERS, ids=[str(p.relative_to(REPO_ROOT)) for p in READERS])
def test_no_file_sets_a_setting_to_its_schema_default(reader):
    restated = defaults_set(code(reader))
    assert not restated, f"{reader.name} restates core/config.py's defaults; leave them to the service: {restated}"


def test_the_load_balancer_image_listens_on_docker_envs_container_port():
    """The image's own port (its NGINX `listen`) is the one fact docker/.env names for a file it cannot reach."""
    listen = re.search(r"^listen (\d+);", (REPO_ROOT / "load-balancer" / "messenger-listen.conf").read_text(), re.M)
    assert listen and listen.group(1) == PLATFORM["LB_CONTAINER_PORT"]


def test_the_guards_catch_a_restated_fact():
    """The checks above find what they look for (a check that never matches passes for nothing)."""
    assert stated(PLATFORM["KV_DB_PORT"], "for kv in messenger-db-port=5432") == ["for kv in messenger-db-port=5432"]
    assert stated("5672", 'ports: ["${RABBITMQ_HOST_PORT}:15672"]') == []
    assert stated("messenger-db-host", "PGHOST=${KV_DB_HOST}") == []
    assert stated("migrator_password", '-v, "migrator_password=${POSTGRES_MIGRATOR_PASSWORD}"') == []
    assert stated("migrator_password", "messenger-db-migrator-password-never-do-this=migrator_password") != []
    before = [
        "JSON_BODY_LIMIT=100kb",
        "      JSON_BODY_LIMIT: 100kb",
        "    D:PGPORT=5432",
        'CONSUL_CHECK_INTERVAL="${CONSUL_CHECK_INTERVAL:-15s}"',
        '  CONSUL_PORT: "8500"',
    ]
    assert sorted(defaults_set("\n".join(before))) == sorted(line.strip() for line in before)
    assert defaults_set("JSON_BODY_LIMIT=20b\nPORT=0\nPORT=40000\nCONSUL_PORT: ${CONSUL_HTTP_PORT}") == []
