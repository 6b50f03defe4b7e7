"""docker/compose.yaml on the real engine: `up` brings up the same system as the deploy scripts, the tutorial's
transcript passes through the load balancer, and `down -v` leaves nothing.

Run with Debian's docker-compose 1.29 and, where the docker client has it, the compose plugin. Every published port
is a free one (this machine's own RabbitMQ holds 5672); the images are the session's (`make docker-images`).
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.support.docker import compose, compose_commands, engine_objects
from tests.support.processes import free_port, wait_until
from tests.support.stack import Stack, run_tutorial_transcript

pytestmark = pytest.mark.slow


def passing_instances(consul_port: int) -> int:
    url = f"http://127.0.0.1:{consul_port}/v1/health/service/messenger?passing=true"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return len(json.load(response))
    except OSError:
        return 0


def lb_healthy(stack: Stack) -> bool:
    try:
        return stack.get("/health")[0] == 200
    except OSError:
        return False


@pytest.mark.parametrize("command", compose_commands(), ids=" ".join)
def test_compose_up_runs_the_tutorial_and_down_leaves_nothing(docker_clean, command):
    consul_port, rabbitmq_port, lb_port = free_port(), free_port(), free_port()
    env = {
        "CONSUL_HOST_PORT": str(consul_port),
        "RABBITMQ_HOST_PORT": str(rabbitmq_port),
        "RABBITMQ_MANAGEMENT_HOST_PORT": str(free_port()),
        "LB_PORT": str(lb_port),
    }
    stack = Stack(env, lb_port)
    try:
        # --no-build: the session's images (the load balancer's renderer is the watcher: see conftest.py).
        compose("up", "--detach", "--no-build", command=command, env=env)
        wait_until(
            lambda: passing_instances(consul_port) == 3 and lb_healthy(stack),
            120,
            interval=0.5,
            what="three passing instances behind the load balancer",
        )

        run_tutorial_transcript(stack, amqp_port=rabbitmq_port)
    finally:
        compose("down", "--volumes", command=command, env=env)

    assert engine_objects() == docker_clean, "compose down -v left containers, networks or volumes"
