"""The Docker path, checked as far as a machine without a Docker engine can.

No engine runs here, so images are not built: the compose file is parsed by
docker-compose itself, every Dockerfile goes through hadolint, and the
container entry point (consul_env.py) runs for real against a Consul agent.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import REPO_ROOT

DOCKERFILES = sorted([*REPO_ROOT.glob("docker/**/Dockerfile"), *REPO_ROOT.glob("load-balancer/**/Dockerfile")])
COMPOSE = REPO_ROOT / "docker" / "compose.yaml"
HADOLINT = Path(sys.executable).with_name("hadolint")


def test_compose_file_is_valid_and_pins_the_platform():
    assert shutil.which("docker-compose"), "docker-compose is installed by scripts/install-system-deps.sh"
    result = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    rendered = result.stdout
    assert "image: hashicorp/consul:1.14.4" in rendered
    assert "image: rabbitmq:3.11.4-management-alpine" in rendered
    assert "image: postgres:15.1" in rendered
    assert re.search(r"replicas: 3", rendered)
    assert "8085:8085" in rendered or "published: 8085" in rendered


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
    env = {"PATH": os.environ["PATH"], "CONSUL_HOST": "127.0.0.1", "CONSUL_PORT": str(agent.http_port),
           "CONSUL_KV_ENV": mapping, "CONSUL_KV_WAIT": "2"}
    return subprocess.run([sys.executable, str(REPO_ROOT / "docker" / "consul_env.py"), *command], env=env,
                          capture_output=True, text=True, timeout=30)


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
