"""docker/.env as the tests read it: the platform's facts (image versions, ports, roles and passwords, Consul KV key
names), declared there once for compose, the deploy scripts and the tests alike."""

from tests.support.processes import REPO_ROOT

DOCKER_ENV_FILE = REPO_ROOT / "docker" / ".env"


def docker_env() -> dict[str, str]:
    """NAME=value lines, as compose and infrastructure/lib.sh read them (no quoting, `#` starts a comment line)."""
    lines = (line for line in DOCKER_ENV_FILE.read_text().splitlines() if line and not line.startswith("#"))
    return dict(line.split("=", 1) for line in lines)


PLATFORM = docker_env()
