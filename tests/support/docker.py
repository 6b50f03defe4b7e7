"""The Docker engine as the tests see it: the docker CLI, the topology's containers, and what is ours.

"Ours" is what the deploy scripts and the compose file create, by the seed's names: the tests remove only those.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

from tests.support.processes import REPO_ROOT, run_command, wait_until

COMPOSE_FILE = REPO_ROOT / "docker" / "compose.yaml"
COMPOSE_PROJECT = "messenger-test"
# The seed's container, network and volume names (infrastructure/*.sh).
SCRIPT_CONTAINERS = (
    "messenger-lb",
    "messenger-worker",
    "messenger-migrator",
    "messenger-db-primary",
    "rabbitmq",
    "consul-client",
    "consul-server",
)
NETWORK = "mm_2023"
SCRIPT_VOLUMES = ("db-data",)
# Containers and networks a test makes by itself carry this label.
TEST_LABEL = "messenger.test"


def docker(*args: str, check: bool = True, timeout: float = 120) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"docker {' '.join(args)} failed: {result.stderr}"
    return result.stdout.strip()


def lines(text: str) -> set[str]:
    return {line for line in text.splitlines() if line}


def our_containers() -> set[str]:
    """Containers of ours, running or not: the seed's names, instances (by label) and the compose project's."""
    named = lines(docker("ps", "--all", "--format", "{{.Names}}"))
    labelled = lines(docker("ps", "--all", "--filter", "label=messenger.kind", "--format", "{{.Names}}"))
    composed = lines(
        docker(
            "ps", "--all", "--filter", f"label=com.docker.compose.project={COMPOSE_PROJECT}", "--format", "{{.Names}}"
        )
    )
    tests = lines(docker("ps", "--all", "--filter", f"label={TEST_LABEL}", "--format", "{{.Names}}"))
    return (named & set(SCRIPT_CONTAINERS)) | labelled | composed | tests


def our_objects() -> dict[str, set[str]]:
    """Every container, network and volume of ours that exists now."""
    volumes = lines(docker("volume", "ls", "--format", "{{.Name}}"))
    return {
        "containers": our_containers(),
        "networks": (lines(docker("network", "ls", "--format", "{{.Name}}")) & {NETWORK})
        | lines(docker("network", "ls", "--filter", f"label={TEST_LABEL}", "--format", "{{.Name}}")),
        "volumes": {v for v in volumes if v in SCRIPT_VOLUMES or v.startswith(f"{COMPOSE_PROJECT}_")},
    }


def engine_objects() -> dict[str, set[str]]:
    """Every container, network and volume on the engine (anonymous volumes too), to compare before and after."""
    return {
        "containers": lines(docker("ps", "--all", "--format", "{{.Names}}")),
        "networks": lines(docker("network", "ls", "--format", "{{.Name}}")),
        "volumes": lines(docker("volume", "ls", "--format", "{{.Name}}")),
    }


def remove_leftovers() -> None:
    """Remove what an earlier run of ours left (a test that died before its own clean-up)."""
    compose("down", "--volumes", "--remove-orphans", check=False)
    containers = our_containers()
    if containers:
        docker("rm", "--force", "--volumes", *containers)
    objects = our_objects()
    for network in objects["networks"]:
        docker("network", "rm", network)
    if objects["volumes"]:
        docker("volume", "rm", *objects["volumes"])


def compose_commands() -> list[list[str]]:
    """The compose implementations on this machine: Debian's docker-compose 1.29, and the CLI plugin if present."""
    commands = [["docker-compose"]]
    if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0:
        commands.append(["docker", "compose"])
    return commands


def compose(
    *args: str, command: list[str] | None = None, env: dict | None = None, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess:
    return run_command(
        [*(command or ["docker-compose"]), "-p", COMPOSE_PROJECT, "-f", str(COMPOSE_FILE), *args],
        env={**os.environ, **(env or {})}, what=f"compose {' '.join(args)}", check=check, timeout=timeout,
    )  # fmt: skip


def inspect(container: str) -> dict:
    return json.loads(docker("inspect", container))[0]


def address_on(container: str, network: str) -> str:
    return inspect(container)["NetworkSettings"]["Networks"][network]["IPAddress"]


def crash(container: str) -> int:
    """SIGKILL the container's main process from this host, as a crash or the kernel's OOM killer would end it.

    Returns the restart count before. (`docker kill` is a person stopping the container: the engine then leaves it
    stopped, whatever its restart policy.)
    """
    state = inspect(container)
    os.kill(state["State"]["Pid"], signal.SIGKILL)
    return state["RestartCount"]


def wait_restarted(container: str, restarts_before: int, timeout: float = 60) -> None:
    """Wait until the engine has started the container again and it runs."""

    def restarted() -> bool:
        state = inspect(container)
        return state["RestartCount"] > restarts_before and state["State"]["Running"]

    wait_until(restarted, timeout, interval=0.5, what=f"{container} restarted by the engine")
