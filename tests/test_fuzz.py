"""Fuzzing in CI: schemathesis against the served description, on a live gunicorn and through NGINX.

Bounded by tests/fuzz/schemathesis.toml (fixed seed, 15 examples per operation
and phase, 60 s at most): zero 5xx, zero responses outside the description,
every invalid request refused with a 4xx. What it found once is kept as a
regular test in conversations/tests/test_fuzz_regressions.py.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.live_service import database_env, seed_chat
from tests.support.load_balancer import nginx_in_front_of
from tests.support.openapi_check import ResponseChecker, served_schema
from tests.support.processes import REPO_ROOT, http_get
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, reset_sequences=True)]

CONFIG = REPO_ROOT / "tests" / "fuzz" / "schemathesis.toml"


@pytest.fixture
def service(tmp_path):
    users, conversation = seed_chat()
    service = ServiceProcess(database_env(JSON_BODY_LIMIT="4kb", WEB_THREADS="4"), tmp_path / "service.log").start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(params=["gunicorn", "load balancer"])
def target(request, service, tmp_path):
    """Where the fuzzer sends its requests: the instance itself, or the project's NGINX in front of it."""
    if request.param == "gunicorn":
        yield service.url
    else:
        with nginx_in_front_of(service.port, tmp_path / "nginx") as nginx:
            yield f"http://127.0.0.1:{nginx.port}"


def test_fuzzing_finds_no_server_error_and_no_response_outside_the_description(service, target, tmp_path):
    st = Path(sys.executable).with_name("st")
    result = subprocess.run(
        [
            str(st),
            "--config-file",
            str(CONFIG),
            "--no-color",
            "run",
            f"{target}/schema",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path / "report"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    summary = result.stdout[-8000:]
    assert result.returncode == 0, summary
    assert "generated" in summary and " passed" in summary, summary
    log = service.log_path.read_text()
    assert "Traceback" not in log, log[-5000:]


def test_overlong_request_line_is_the_documented_414(service):
    """gunicorn refuses it before Django; the description says so, and the response matches."""
    url = f"{service.url}/conversations/1/messages?after_index={'1' * 5000}"
    status, body, headers = http_get(url)
    assert status == 414
    ResponseChecker(served_schema()).check_live(
        "GET", url, "/conversations/{conversation_id}/messages", status, body, headers
    )
