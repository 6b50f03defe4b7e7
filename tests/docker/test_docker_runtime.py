"""The seed's deploy scripts in their Docker form, as `make up` runs them with MESSENGER_RUNTIME=docker.

On the real engine: the platform's containers (Consul server and client, RabbitMQ) on the seed's network mm_2023,
the database container, the migrator job, three instances, the worker and the load balancer, every published port a
free one (this machine's own RabbitMQ holds 5672). Then the tutorial's transcript through the load balancer, scaling
under load, crashed containers the engine brings back by itself, `make reset-db`, and `make down` leaving nothing.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest

from tests.support.docker import NETWORK, address_on, crash, docker, engine_objects, inspect, wait_restarted
from tests.support.processes import free_port, wait_until
from tests.support.rabbitmq import QueueReader, RabbitVhost
from tests.support.stack import SEED, Stack, run_tutorial_transcript, scale_to_five_and_back_under_load

pytestmark = pytest.mark.slow


class DockerStack(Stack):
    """The Docker runtime with this test's host ports and state folder."""

    def __init__(self, state_dir):
        self.consul_host_port = free_port()
        self.consul_url = f"http://127.0.0.1:{self.consul_host_port}"
        self.rabbitmq_host_port = free_port()
        lb_port = free_port()
        super().__init__(
            {
                "MESSENGER_RUNTIME": "docker",
                "MESSENGER_STATE_DIR": str(state_dir),
                # As the seed says it: instances reach the agent by its name on mm_2023; this host at its published port.
                "CONSUL_HOST": "consul-client",
                "CONSUL_PORT": "8500",
                "CONSUL_HOST_PORT": str(self.consul_host_port),
                "RABBITMQ_HOST_PORT": str(self.rabbitmq_host_port),
                "RABBITMQ_MANAGEMENT_HOST_PORT": str(free_port()),
                "LB_PORT": str(lb_port),
                "SHUTDOWN_DRAIN_SECONDS": "2",
                # A crashed instance's registration turns critical (and leaves the load balancer) within seconds.
                "CONSUL_CHECK_INTERVAL": "2s",
                "LB_RENDERER": "watcher",  # see tests/docker/conftest.py
            },
            lb_port,
        )

    def passing(self) -> set[str]:
        """host:port of every passing messenger instance, as Consul's health API lists them."""
        url = f"http://127.0.0.1:{self.consul_host_port}/v1/health/service/messenger?passing=true"
        with urllib.request.urlopen(url, timeout=5) as response:
            return {f"{e['Service']['Address']}:{e['Service']['Port']}" for e in json.load(response)}

    def psql(self, user: str, sql: str) -> tuple[int, str]:
        """Run SQL in the database container as `user` (over its socket); (exit status, output)."""
        result = docker_exec("messenger-db-primary", "psql", "-X", "-At", "-U", user, "-d", "messenger", "-c", sql)
        return result.returncode, result.stdout + result.stderr


def docker_exec(container: str, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "exec", container, *command], capture_output=True, text=True, timeout=60)


def serves(stack: DockerStack, upstream: str, attempts: int = 30) -> bool:
    """Some request through the load balancer is answered by `upstream` (a bounded number of tries)."""
    seen = {stack.get("/health")[2].get("Upstream-Host") for _ in range(attempts)}
    assert upstream in seen, (
        f"{upstream} not among {seen}; load balancer: {docker('logs', '--tail', '8', 'messenger-lb')}"
    )
    return True


def instance_containers() -> list[str]:
    return sorted(docker("ps", "--filter", "label=messenger.kind=messenger", "--format", "{{.Names}}").split())


def test_make_up_in_docker_runs_the_tutorial_scales_survives_crashes_resets_and_make_down_leaves_nothing(
    docker_clean, tmp_path
):
    stack = DockerStack(tmp_path / "state")
    try:
        up = stack.make("up", timeout=600)
        assert "the stack is up" in up
        assert up.count(" passing ") == 3, up
        assert len(instance_containers()) == 3

        # chat_queue in the stack's own RabbitMQ container, reached at its published port.
        run_tutorial_transcript(stack, amqp_port=stack.rabbitmq_host_port)

        # Serving instances connect with the application role: rows only, no DDL.
        status, output = stack.psql("messenger", "CREATE TABLE ddl_probe (id integer)")
        assert status != 0 and "permission denied for schema public" in output, output
        assert stack.psql("messenger", "SELECT count(*) FROM users") == (0, "3\n")

        # Scale to five and back to three under a steady bounded load: no request fails (the two stopped
        # containers get SIGTERM and drain as a local instance does).
        scale_to_five_and_back_under_load(stack)
        status, indexes = stack.psql("postgres", "SELECT index FROM messages WHERE channel_id = 1 ORDER BY index")
        stored = [int(i) for i in indexes.split()]
        assert status == 0 and stored == list(range(1, len(stored) + 1)), "indexes stay contiguous under scaling"

        # A serving container whose process dies is started again by the engine, registers and serves.
        victim = instance_containers()[0]
        restarts = crash(victim)
        wait_restarted(victim, restarts)
        # The engine may give the restarted container another address on the network.
        upstream = f"{address_on(victim, NETWORK)}:4000"
        # Its start is the master's preload beside the live listener's import, the wait for the listener, the
        # registration and Consul's first check: on 2 cores beside the swarm's drills, CI once saw it pass 60 s.
        try:
            wait_until(lambda: upstream in stack.passing(), 120, interval=0.5, what="the restarted instance passing")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{docker('logs', '--tail', '40', victim, check=False)}") from None
        wait_until(lambda: serves(stack, upstream), 30, interval=0.5, what="the restarted instance serving")
        # The crashed process's own registration turns critical once its check times out on the old address.
        wait_until(
            lambda: stack.passing() == {f"{address_on(c, NETWORK)}:4000" for c in instance_containers()},
            60,
            interval=0.5,
            what="exactly the three running instances passing",
        )
        # The engine's own view agrees: the image's health check (GET /health) passes in every instance.
        wait_until(
            lambda: {inspect(c)["State"]["Health"]["Status"] for c in instance_containers()} == {"healthy"},
            60,
            interval=1,
            what="every instance container healthy",
        )

        # The same for the worker: back by itself, it relays the next message's event.
        restarts = crash("messenger-worker")
        wait_restarted("messenger-worker", restarts)
        reader = QueueReader(RabbitVhost("/"), "chat_queue", port=stack.rabbitmq_host_port)
        reader.purge()
        try:
            status, body = stack.post("/conversations/1/messages", {"content": "after the worker's crash"}, user=2)
            assert status == 201
            # Events of the scaling drill's messages may still be on their way: wait for this message's.
            relayed: list[int] = []

            def relayed_this_one() -> bool:
                relayed.extend(json.loads(delivery.body)["index"] for delivery in reader.drain())
                return body["message"]["index"] in relayed

            wait_until(relayed_this_one, 60, interval=0.2, what="the new message's event on chat_queue")
        finally:
            reader.close()

        # make reset-db empties the database and seeds it again, through the migrator container.
        stack.make("reset-db")
        assert stack.psql("postgres", "SELECT count(*) FROM channels") == (0, "0\n")
        users = stack.psql("postgres", "SELECT string_agg(name, ',' ORDER BY id) FROM users")
        assert users == (0, ",".join(SEED) + "\n")
    finally:
        down = stack.make("down", timeout=300)

    assert "stopped" in down
    assert engine_objects() == docker_clean, "make down left containers, networks or volumes of ours"
