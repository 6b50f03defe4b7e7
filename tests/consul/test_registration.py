"""Each serving instance registers itself in Consul once, stays registered, and leaves first on shutdown.

Real parts throughout: a Consul agent, gunicorn instances started by
infrastructure/messenger-deploy.sh (or directly, where Consul must be down while
they start), PostgreSQL behind a TCP proxy the test can cut, RabbitMQ for the
Celery worker.
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pika
import pytest

from tests.support.processes import REPO_ROOT, ConsulAgent, free_port, http_get, port_open, wait_until
from tests.support.service import ServiceProcess
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow

# What discovery logs (INFO) the moment it starts registering a process.
REGISTERING = "registering this instance in Consul"


def _check_status(consul_agent, service_id: str) -> str | None:
    for check in consul_agent.checks("messenger"):
        if check["ServiceID"] == service_id:
            return check["Status"]
    return None


def _service_on(passing: dict[str, dict], port: int) -> str:
    [service_id] = [sid for sid, service in passing.items() if service["Port"] == port]
    return service_id


def test_three_deploys_give_three_passing_instances_each_registered_once(infrastructure):
    infrastructure.platform_and_database()
    instances = [infrastructure.deploy() for _ in range(3)]

    passing = infrastructure.wait_passing(3)
    # Two gunicorn workers per instance, one registration per instance.
    assert sorted(service["Port"] for service in passing.values()) == sorted(map(infrastructure.port, instances))
    assert {service["Address"] for service in passing.values()} == {"127.0.0.1"}
    for instance in instances:
        port = infrastructure.port(instance)
        assert _service_on(passing, port).startswith(f"messenger-{os.uname().nodename}-{port}-")
        status, body, _ = http_get(f"http://127.0.0.1:{port}/health")
        assert (status, body) == (200, b"OK")


def test_sigterm_leaves_the_catalog_before_the_instance_stops_accepting_connections(infrastructure, consul_agent):
    infrastructure.platform_and_database()
    instances = [infrastructure.deploy() for _ in range(3)]
    passing = infrastructure.wait_passing(3)
    victim, *others = instances
    port = infrastructure.port(victim)
    service_id = _service_on(passing, port)

    stopping = infrastructure.start("messenger-stop.sh", victim)  # SIGTERM, then waits for the exit
    left_catalog = stopped_accepting = None
    served_after_leaving = 0

    def sample() -> bool:
        """One look at the catalog and the port; True once the instance stopped accepting."""
        nonlocal left_catalog, stopped_accepting, served_after_leaving
        in_catalog = any(entry["ServiceID"] == service_id for entry in consul_agent.catalog_instances("messenger"))
        if left_catalog is None and not in_catalog:
            left_catalog = time.monotonic()
        if not port_open(port):
            stopped_accepting = time.monotonic()
        elif left_catalog is not None:
            status, body, _ = http_get(f"http://127.0.0.1:{port}/health", timeout=2)
            served_after_leaving += (status, body) == (200, b"OK")
        return stopped_accepting is not None

    wait_until(sample, timeout=30, interval=0.05, what="the instance to stop accepting connections")
    assert stopping.wait(timeout=30) == 0, stopping.stderr.read()

    assert left_catalog is not None and stopped_accepting is not None
    assert left_catalog < stopped_accepting
    assert served_after_leaving > 0  # drained: still answering while the load balancer drops it
    assert f"[messenger-stop.sh] {victim}: stopped" in stopping.stderr.read()
    assert sorted(service["Port"] for service in infrastructure.passing().values()) == sorted(
        map(infrastructure.port, others)
    )
    assert not (infrastructure.state_dir / "messenger" / f"{victim}.pid").exists()


def test_sigkilled_instance_is_started_again_by_its_supervisor_and_registers_anew(infrastructure, consul_agent):
    """No chance to deregister: its entry turns critical; supervisord starts it again on its port, which replaces it."""
    infrastructure.platform_and_database()
    instance = infrastructure.deploy()
    port = infrastructure.port(instance)
    service_id = _service_on(infrastructure.wait_passing(1), port)
    pid = infrastructure.pid(instance)

    os.killpg(pid, signal.SIGKILL)  # the whole instance, as a crash would

    wait_until(lambda: _check_status(consul_agent, service_id) == "critical", 20, what="a critical check")
    # Until the new process registers, its predecessor's entry may pass again: its check reaches the new
    # process on the same port. The new registration replaces it.
    new_id, service = wait_until(
        lambda: next(((i, s) for i, s in infrastructure.passing().items() if i != service_id), None),
        60,
        what="the new process registered and passing",
    )
    assert service["Port"] == port
    assert infrastructure.pid(instance) != pid
    # The new process took its predecessor's entry over: one entry, not two passing for one instance.
    assert [entry["ServiceID"] for entry in consul_agent.catalog_instances("messenger")] == [new_id]
    result = infrastructure.run("messenger-stop.sh", "--all")
    assert f"[messenger-stop.sh] {instance}: stopped\n" in result.stderr
    assert list(infrastructure.state_dir.glob("messenger/*.pid")) == []


def test_database_outage_turns_the_check_critical_until_the_database_returns(infrastructure, consul_agent):
    infrastructure.platform_and_database()
    with TcpProxy(5432) as database:
        # The database moved behind the proxy: the db team updates the key.
        consul_agent.kv_put("messenger-db-port", str(database.port))
        instance = infrastructure.deploy()
        port = infrastructure.port(instance)
        service_id = _service_on(infrastructure.wait_passing(1), port)

        database.cut()
        wait_until(lambda: _check_status(consul_agent, service_id) == "critical", 20, what="a critical check")
        assert http_get(f"http://127.0.0.1:{port}/health")[:2] == (503, b"Database unavailable")
        assert infrastructure.passing() == {}

        database.restore()
        infrastructure.wait_passing(1, timeout=20)


def test_an_instance_whose_database_returns_passes_at_once_not_at_consuls_next_check(infrastructure, consul_agent):
    """With the contract's 15 s check, Consul would count the instance critical for up to 15 s after the database
    came back (and an outage turns every instance critical together: the load balancer has none). The instance
    asks /health every second while critical and passes itself as soon as it answers 200."""
    infrastructure.platform_and_database()
    with TcpProxy(5432) as database:
        consul_agent.kv_put("messenger-db-port", str(database.port))
        instance = infrastructure.deploy(CONSUL_CHECK_INTERVAL="15s")
        service_id = _service_on(infrastructure.wait_passing(1), infrastructure.port(instance))

        database.cut()
        wait_until(
            lambda: _check_status(consul_agent, service_id) == "critical", 40, interval=0.2, what="a critical check"
        )
        database.restore()  # Consul's own next check is 15 s after the one that just failed
        # The check is removed and registered anew: for a moment the service has none (which Consul counts as
        # passing), so what is waited for is the check itself, passing.
        wait_until(
            lambda: _check_status(consul_agent, service_id) == "passing", 7, interval=0.1, what="the check passing"
        )
        assert list(infrastructure.wait_passing(1, timeout=1)) == [service_id]


def _instance_env(consul_port: int, database: str, **extra: str) -> dict[str, str]:
    return {
        "PGHOST": "127.0.0.1",
        "PGUSER": "postgres",
        "PGDATABASE": database,
        "CONSUL_HOST": "127.0.0.1",
        "CONSUL_PORT": str(consul_port),
        "CONSUL_CHECK_INTERVAL": "1s",
        **extra,
    }


def test_instance_started_while_consul_is_down_registers_once_consul_is_up_and_again_after_it_forgets(
    tmp_path, instances_db
):
    retry = 2.0
    agent = ConsulAgent()  # its port is known; the agent is not running yet
    service = ServiceProcess(
        _instance_env(
            agent.http_port,
            instances_db,
            CONSUL_SERVICE_NAME="messenger",
            CONSUL_RETRY_INTERVAL="2s",
            LOG_LEVEL="DEBUG",
        ),
        tmp_path / "instance.log",
    )
    try:
        service.start()
        assert http_get(f"{service.url}/health")[:2] == (200, b"OK")  # serves while Consul is down
        # The backoff doubles from 0.5s up to the retry interval: wait until it is there.
        wait_until(
            lambda: f"retrying in {retry:.1f}s" in service.log_path.read_text(),
            30,
            what="the registration backoff to reach its cap",
        )
        assert (
            REGISTERING in service.log_path.read_text()
        )  # what the tests of processes that must not register look for

        agent.start()
        # Within one retry period (plus the agent's own bookkeeping).
        wait_until(lambda: agent.healthy_instances("messenger"), retry + 3, what="registration after Consul came up")

        [first] = agent.catalog_instances("messenger")

        # The agent comes back without its data (a new container, a lost disk):
        # it has forgotten the service, and the instance registers again.
        agent.cleanup()
        agent = ConsulAgent(http_port=agent.http_port).start()
        wait_until(lambda: agent.catalog_instances("messenger"), retry + 3, what="registration after a restart")
        [entry] = agent.catalog_instances("messenger")
        assert (entry["ServiceID"], entry["ServicePort"]) == (first["ServiceID"], service.port)
        log = tmp_path / "instance.log"
        wait_until(
            lambda: f"registered again {entry['ServiceID']} in Consul" in log.read_text(),
            5,
            what="the instance's own account of registering again",
        )
    finally:
        service.stop()
        agent.cleanup()


def _registered_services(agent) -> dict:
    status, body, _ = http_get(f"{agent.url}/v1/agent/services")
    assert status == 200
    return json.loads(body)


@pytest.mark.parametrize("command", [["manage.py", "check"], ["manage.py", "config"], ["manage.py", "showmigrations"]])
def test_management_commands_register_nothing(consul_agent, instances_db, command):
    env = {
        "PATH": os.environ["PATH"],
        "APP_ENV": "production",
        **_instance_env(consul_agent.http_port, instances_db, CONSUL_SERVICE_NAME="messenger"),
    }
    result = subprocess.run(
        [sys.executable, *command], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert _registered_services(consul_agent) == {}


def test_the_test_process_registers_nothing(consul_agent, instances_db):
    """A pytest run sets Django up (AppConfig.ready() runs) with a service name in its environment."""
    env = {
        **os.environ,
        "CONSUL_SERVICE_NAME": "messenger",
        "CONSUL_HOST": "127.0.0.1",
        "CONSUL_PORT": str(consul_agent.http_port),
        "PGDATABASE": f"{instances_db}_pytest",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "core/tests/test_config.py",
            "-k",
            "test_defaults_load_with_an_empty_environment",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert _registered_services(consul_agent) == {}


SERVE_AFTER_READY = """
import threading, time, wsgiref.simple_server, os
from messenger import gunicorn_conf  # the serving entry point marks this process
import django
django.setup()  # AppConfig.ready(): starts the registration, which waits for /health to answer
from messenger.wsgi import application
server = wsgiref.simple_server.make_server("127.0.0.1", int(os.environ["PORT"]), application)
threading.Thread(target=server.serve_forever, daemon=True).start()
time.sleep(float(os.environ["SERVE_SECONDS"]))
"""


def test_ready_registers_the_process_the_serving_entry_point_marked(consul_agent, instances_db):
    """The design card's hook: AppConfig.ready() registers, here with no gunicorn hook ever run."""
    port = free_port()
    env = {
        **os.environ,
        "APP_ENV": "test",
        "PGDATABASE": instances_db,
        "PORT": str(port),
        "BIND_HOST": "127.0.0.1",
        "CONSUL_SERVICE_NAME": "messenger",
        "CONSUL_HOST": "127.0.0.1",
        "CONSUL_PORT": str(consul_agent.http_port),
        "SERVE_SECONDS": "20",
    }
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE_AFTER_READY],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        passing = wait_until(lambda: consul_agent.healthy_instances("messenger"), 15, what="registered from ready()")
        assert [(entry["Service"]["Address"], entry["Service"]["Port"]) for entry in passing] == [("127.0.0.1", port)]
    finally:
        process.kill()
        process.wait(timeout=10)


def test_celery_worker_registers_nothing(consul_agent, instances_db, tmp_path):
    queue = f"consul-registration-test-{uuid.uuid4().hex[:8]}"  # consumes nothing anyone else sends
    env = {
        "PATH": os.environ["PATH"],
        "APP_ENV": "production",
        "AMQPHOST": "127.0.0.1",
        **_instance_env(consul_agent.http_port, instances_db, CONSUL_SERVICE_NAME="messenger"),
    }
    log = tmp_path / "worker.log"
    with open(log, "wb") as output:
        worker = subprocess.Popen(
            [
                str(REPO_ROOT / ".venv/bin/celery"),
                "-A",
                "messenger",
                "worker",
                "--pool",
                "solo",
                "-Q",
                queue,
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel",
                "INFO",
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(lambda: b" ready." in log.read_bytes() or worker.poll() is not None, 60, what="celery ready")
        assert worker.poll() is None, log.read_text()[-3000:]
        # ready() ran before Celery said " ready."; a registration would have said so by then.
        assert REGISTERING not in log.read_text()
        assert _registered_services(consul_agent) == {}
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)
        with pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1")) as connection:
            connection.channel().queue_delete(queue)


def test_serving_instance_without_a_service_name_registers_nothing(consul_agent, instances_db, tmp_path):
    service = ServiceProcess(_instance_env(consul_agent.http_port, instances_db), tmp_path / "instance.log")
    try:
        service.start()
        # ready() and gunicorn's when_ready ran before the instance answered; neither registered.
        assert REGISTERING not in service.log_path.read_text()
        assert _registered_services(consul_agent) == {}
    finally:
        service.stop()
