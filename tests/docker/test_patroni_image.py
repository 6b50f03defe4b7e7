"""The Patroni member image (docker/patroni/) on the real engine: one member per data volume.

The engine may start a task's replacement on the same host, so on the same
volume, before the task it replaces has stopped (seen in the swarm after a node
came back). PostgreSQL's own interlock cannot see across containers, so the
entrypoint holds a lock on the volume: a second member waits until the first
has gone, and only then starts Patroni.
"""

from __future__ import annotations

import os
import subprocess

from tests.support.docker import COMPOSE_PROJECT, TEST_LABEL, docker
from tests.support.processes import wait_until

IMAGE = "messenger-patroni"
DATA = "/var/lib/postgresql/data"
PATRONI = "patroni /tmp/patroni.yml"  # Patroni's command line (the entrypoint's own path holds "patroni" too)
# What the entrypoint requires; nothing here is contacted before Patroni runs.
MEMBER_ENV = {
    "PATRONI_SCOPE": "messenger-db-lock-test",
    "POSTGRES_USER": "postgres",
    "POSTGRES_PASSWORD": "unused",
    "REPLICATION_USER": "replicator",
    "REPLICATION_PASSWORD": "unused",
    "POSTGRES_PORT": "5432",
    "CONSUL_HTTP_PORT": "8500",
    "HOSTS_SUBNET": "10.77.1.0/24",
}


def _commands(container: str) -> str:
    """The command lines of the container's processes."""
    return docker("top", container, "-eo", "pid,args", check=False)  # the engine needs the pid column


def _output(container: str) -> str:
    """What the container wrote, standard output and error."""
    result = subprocess.run(["docker", "logs", container], capture_output=True, text=True, timeout=30)
    return result.stdout + result.stderr


def test_a_member_starts_only_once_the_member_before_it_on_its_volume_has_stopped(docker_images):
    volume = f"{COMPOSE_PROJECT}_member-lock-{os.getpid()}"
    names = [f"messenger-test-member-lock-{role}-{os.getpid()}" for role in ("before", "next")]
    before, following = names
    docker("volume", "create", volume)
    try:
        # The member before: what holds the lock while it lives, as Patroni does.
        docker("run", "--detach", "--name", before, "--label", TEST_LABEL, "--volume", f"{volume}:{DATA}",
               "--entrypoint", "flock", IMAGE, f"{DATA}/.member.lock", "sleep", "300")  # fmt: skip
        wait_until(lambda: "sleep 300" in _commands(before), 30, what="the member before holding the lock")
        env = [arg for name, value in MEMBER_ENV.items() for arg in ("--env", f"{name}={value}")]
        docker("run", "--detach", "--name", following, "--label", TEST_LABEL, "--volume", f"{volume}:{DATA}",
               *env, IMAGE)  # fmt: skip
        wait_until(
            lambda: "another member still runs on this volume; waiting until it stops" in _output(following),
            60,
            what="the next member saying it waits",
        )
        running = _commands(following)
        assert "flock 9" in running and PATRONI not in running, running

        docker("stop", "--time", "1", before)
        # Now it goes on: Patroni runs (it then looks for its Consul, which is not there; that is not this test's).
        wait_until(lambda: PATRONI in _commands(following), 60, what="Patroni started in the next member")
    finally:
        docker("rm", "--force", *names, check=False)
        docker("volume", "rm", volume, check=False)
