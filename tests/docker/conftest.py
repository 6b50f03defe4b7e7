"""Fixtures for the tests that run the Docker path for real: an engine, every image, and what an earlier run left.

The engine is this machine's Docker (Debian's docker.io), started for the session by scripts/ensure-docker.sh when
none answers and stopped afterwards only if the session started it. The images are `make docker-images`'s, built
from stand-ins where no registry answers (tests/docker/stand-ins/).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.docker import docker, engine_objects, remove_leftovers
from tests.support.processes import REPO_ROOT

STATE_DIR = Path(os.environ.get("MESSENGER_STATE_DIR", REPO_ROOT / ".state"))
# Present while an engine scripts/ensure-docker.sh started runs.
STARTED_RECORD = STATE_DIR / "docker" / "dockerd.started-here.pid"
# consul-template downloads from HashiCorp's release site, which the machines this suite runs on do not reach, so
# the load balancer image is built with the project's own renderer (upstream_watcher.py). It renders the very same
# text (tests/test_load_balancer_config.py keeps the two identical) and is applied by the same nginx-apply.sh.
LB_RENDERER = "watcher"


def _ensure_docker(action: str) -> None:
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "ensure-docker.sh"), action], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"ensure-docker.sh {action} failed:\n{result.stderr}"


@pytest.fixture(scope="session")
def docker_engine():
    """A Docker engine that answers; stopped at the end if this session started it."""
    started_before = STARTED_RECORD.exists()
    _ensure_docker("start")
    started_here = not started_before and STARTED_RECORD.exists()
    try:
        yield
    finally:
        if started_here:
            _ensure_docker("stop")


@pytest.fixture(scope="session")
def docker_images(docker_engine):
    """Every image the topology uses, as `make docker-images` builds them (kept when already current)."""
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "build-docker-images.sh")],
        cwd=REPO_ROOT,
        env={**os.environ, "LB_RENDERER": LB_RENDERER},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, f"make docker-images failed:\n{result.stderr[-4000:]}"
    assert docker("image", "inspect", "--format", "{{.Config.User}}", "messenger-lb") == "101:101"


@pytest.fixture
def docker_clean(docker_images):
    """No container, network or volume of ours from an earlier run; yields what the engine holds before the test."""
    remove_leftovers()
    yield engine_objects()
    remove_leftovers()
