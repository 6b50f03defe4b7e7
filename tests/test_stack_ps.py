"""`make ps` (stack.sh ps) says each piece's real state: a stopped worker or load balancer is not `running`,
and a dead serving instance is not listed among the live ones.

Real supervisord programs, started and stopped through lib.sh, in a state folder
of the test's own; no Consul or load balancer answers (ports nothing listens on).
"""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # a supervisord and four programs

SCRIPT = """
set -euo pipefail
source infrastructure/lib.sh
env_file="${MESSENGER_STATE_DIR}/program.env"
mkdir -p "${MESSENGER_STATE_DIR}"
printf 'PATH=%s\\n' "${PATH}" >"${env_file}"
trap 'supervisor_ctl shutdown >/dev/null 2>&1 || true' EXIT
for program in messenger:messenger-1 messenger:messenger-2 messenger-worker:messenger-worker-1 \
  load-balancer:messenger-lb; do
  supervise "${program%%:*}" "${program#*:}" log:up "${env_file}" bash -c 'echo up; exec sleep 600'
done
supervisor_ctl stop messenger-2 messenger-worker-1 messenger-lb >/dev/null
infrastructure/stack.sh ps
"""


def test_ps_reports_a_stopped_worker_and_load_balancer_and_leaves_dead_instances_out(tmp_path):
    env = {
        **os.environ,
        "MESSENGER_STATE_DIR": str(tmp_path),
        "MESSENGER_RUNTIME": "local",
        "CONSUL_HOST": "127.0.0.1",
        "CONSUL_PORT": "1",
        "LB_PORT": "1",
    }
    env.pop("HOSTS", None)
    result = subprocess.run(["bash", "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[1:] if line.strip()}
    assert rows["messenger-worker-1"][0] == "stopped"
    assert rows["messenger-lb"][0] == "stopped"  # the watcher, as supervisord has it
    assert rows["load-balancer"][0] == "down"  # nothing answers on LB_PORT
    assert rows["messenger-1"][0] == "unregistered"  # live, and not in a Consul that does not answer
    assert "messenger-2" not in rows
    assert "dead instances" in result.stdout and "messenger-2 (make scale replaces them)" in result.stdout
