"""The Docker path's files, checked without an engine: the compose file parsed by docker-compose itself, every
Dockerfile (the stand-ins' too) through hadolint, the Docker scripts through shellcheck, and the container entry point
(consul_env.py) run for real against a Consul agent. tests/docker/ builds the images and runs them on a real engine.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.platform import docker_env
from tests.support.processes import REPO_ROOT

DOCKERFILES = sorted(
    [
        *REPO_ROOT.glob("docker/**/Dockerfile"),
        *REPO_ROOT.glob("load-balancer/**/Dockerfile"),
        *REPO_ROOT.glob("tests/docker/stand-ins/*/Dockerfile"),
    ]
)
COMPOSE = REPO_ROOT / "docker" / "compose.yaml"
HADOLINT = Path(sys.executable).with_name("hadolint")
SHELLCHECK = Path(sys.executable).with_name("shellcheck")
DOCKER_SCRIPTS = [
    "scripts/ensure-docker.sh",
    "scripts/build-docker-images.sh",
    "tests/docker/stand-ins/build.sh",
    *(str(p.relative_to(REPO_ROOT)) for p in REPO_ROOT.glob("tests/docker/stand-ins/*/*.sh")),
]


def compose_config() -> str:
    """docker/compose.yaml as docker-compose itself renders it (docker/.env's values filled in)."""
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ["PATH"]},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_compose_file_is_valid_and_takes_versions_and_host_ports_from_docker_env():
    assert shutil.which("docker-compose"), "docker-compose is installed by scripts/install-system-deps.sh"
    rendered = compose_config()
    versions = docker_env()
    # The seed's platform versions, declared once (docker/.env) for compose and the deploy scripts alike.
    assert versions["CONSUL_IMAGE"] == "hashicorp/consul:1.14.4"
    assert versions["RABBITMQ_IMAGE"] == "rabbitmq:3.11.4-management-alpine"
    assert versions["POSTGRES_IMAGE"] == "postgres:15.1"
    for name in ("CONSUL_IMAGE", "RABBITMQ_IMAGE", "POSTGRES_IMAGE"):
        assert f"image: {versions[name]}" in rendered
        assert f"${{{name}}}" in COMPOSE.read_text()
    assert re.search(r"replicas: 3", rendered)
    for port in ("5672", "15672", "8500", "8085"):
        assert f"published: {port}" in rendered
    assert not re.search(r"apt-get|apk add|pip install", COMPOSE.read_text()), "no container installs at run time"


def test_every_rabbitmq_the_project_starts_gets_the_schedulers_flags_declared_once():
    """Erlang's schedulers do not busy-wait: compose (and so the swarm's stack), the deploy scripts and
    ensure-services.sh pass docker/.env's."""
    flags = docker_env()["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"]
    assert flags.split() == ["+sbwt", "none", "+sbwtdcpu", "none", "+sbwtdio", "none"]
    assert f"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS: {flags}" in compose_config()
    platform = (REPO_ROOT / "infrastructure" / "platform-deploy.sh").read_text()
    # The Docker runtime's container (the swarm's node is compose.yaml's service, checked above).
    assert platform.count("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=${RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS}") == 1
    assert "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=" in (REPO_ROOT / "scripts" / "ensure-services.sh").read_text()


def test_deploy_scripts_name_no_image_version_of_their_own():
    for script in (REPO_ROOT / "infrastructure").glob("*.sh"):
        assert not re.search(r"(hashicorp/consul|rabbitmq|postgres):\d", script.read_text()), script.name


def test_docker_scripts_pass_shellcheck():
    result = subprocess.run(
        [str(SHELLCHECK), "-x", *DOCKER_SCRIPTS], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=[str(p.relative_to(REPO_ROOT)) for p in DOCKERFILES])
def test_dockerfile_passes_hadolint(dockerfile):
    result = subprocess.run([str(HADOLINT), str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_service_image_runs_as_a_non_root_user_and_bakes_in_no_secret():
    text = (REPO_ROOT / "docker" / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert not re.search(r"^(ENV|ARG)\b.*(PASSWORD|SECRET|TOKEN)", text, re.MULTILINE | re.IGNORECASE)


def run_entrypoint(agent, mapping: str, *command: str):
    env = {
        "PATH": os.environ["PATH"],
        "CONSUL_HOST": "127.0.0.1",
        "CONSUL_PORT": str(agent.http_port),
        "CONSUL_KV_ENV": mapping,
        "CONSUL_KV_WAIT": "2",
    }
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "docker" / "consul_env.py"), *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_entrypoint_injects_consul_kv_values_as_environment(consul_agent):
    consul_agent.kv_put("messenger-db-host", "messenger-db-primary")
    consul_agent.kv_put("messenger-db-port", "5432")
    result = run_entrypoint(consul_agent, "PGHOST=messenger-db-host, PGPORT=messenger-db-port", "env")
    assert result.returncode == 0, result.stderr
    assert "PGHOST=messenger-db-primary" in result.stdout.splitlines()
    assert "PGPORT=5432" in result.stdout.splitlines()


def test_entrypoint_refuses_to_start_without_a_key(consul_agent):
    result = run_entrypoint(consul_agent, "PGHOST=messenger-db-host", "env")
    assert result.returncode == 1
    assert "cannot start without Consul KV key(s): messenger-db-host" in result.stderr
    assert "PGHOST=" not in result.stdout
