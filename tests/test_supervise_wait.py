"""lib.sh's `supervise` wait: an instance ready on the last poll is ready, not removed as "not ready".

The loop runs as written in lib.sh; only its surroundings are replaced (the
supervisord calls, and `sleep`, so that 600 polls take no time), and the port
check answers from the chosen poll on.
"""

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each case runs bash through up to 600 polls: seconds

ROOT = Path(__file__).resolve().parent.parent
POLLS = 600  # supervise's bound: 600 polls, 0.1 s apart
SCRIPT = """
set -euo pipefail
source infrastructure/lib.sh
checks=0
port_answers() { checks=$((checks + 1)); [ "${checks}" -gt "${READY_AFTER_CHECKS}" ]; }
sleep() { :; }
ensure_supervisor() { mkdir -p "${SUPERVISOR_DIR}/programs"; }
program_state() { echo GONE; }
supervisor_ctl() { [ "$1" != update ] || echo $$ >"$(state_path web web-1 pid)"; }
unsupervise() { echo "unsupervised $1"; }
supervise web web-1 8999 /dev/null true
echo "supervised after ${checks} checks"
"""


def supervise(tmp_path, ready_after_checks):
    return subprocess.run(
        ["bash", "-c", SCRIPT],
        cwd=ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "MESSENGER_STATE_DIR": str(tmp_path),
            "READY_AFTER_CHECKS": str(ready_after_checks),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("poll", [1, POLLS])
def test_an_instance_ready_on_any_poll_stays_supervised(tmp_path, poll):
    # The first check is supervise's "is the port already taken" before the start.
    result = supervise(tmp_path, ready_after_checks=poll)
    assert result.returncode == 0, result.stderr
    assert "unsupervised" not in result.stdout
    assert f"supervised after {poll + 1} checks" in result.stdout


def test_an_instance_never_ready_is_removed_and_reported(tmp_path):
    result = supervise(tmp_path, ready_after_checks=POLLS + 1)
    assert result.returncode == 1
    assert "unsupervised web-1" in result.stdout
    assert "web-1 was not ready (8999) within 60s" in result.stderr
