"""Observable instances, as gunicorn runs them: several workers, one log stream, one /metrics.

A real gunicorn (2 workers) on the test database, registered in a real Consul
agent: each request is one JSON line on stdout naming the instance by its
Consul service id; /metrics sums the counts of every worker process, including
workers that died since, whichever worker answers the scrape, and reports the
outbox backlog and the registration state.
"""

import json
import os
import signal
import subprocess
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from outbox.models import OutboxEvent
from tests.support.live_service import database_env, seed_chat
from tests.support.metrics import sample
from tests.support.processes import is_live_listener, wait_until
from tests.support.service import ServiceProcess, call

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, reset_sequences=True)]

SERVICE_NAME = "messenger-observed"


@pytest.fixture
def service(consul_agent, tmp_path):
    seed_chat()
    env = database_env(
        WEB_CONCURRENCY="2",
        WEB_THREADS="2",
        LOG_LEVEL="INFO",
        CONSUL_SERVICE_NAME=SERVICE_NAME,
        CONSUL_HOST="127.0.0.1",
        CONSUL_PORT=str(consul_agent.http_port),
    )
    service = ServiceProcess(env, tmp_path / "service.log").start()
    try:
        yield service
    finally:
        service.stop()


def request_lines(service) -> list[dict]:
    lines = []
    for raw in service.log_path.read_text().splitlines():
        if raw.startswith("{") and '"msg":"request"' in raw:
            lines.append(json.loads(raw))
    return lines


def workers(service) -> set[int]:
    """The master's WSGI workers: its children but its live listener (which, killed, stops the instance)."""
    found = subprocess.run(["pgrep", "-P", str(service.process.pid)], capture_output=True, text=True).stdout
    return {int(pid) for pid in found.split() if not is_live_listener(int(pid))}


def replace_every_worker(service) -> None:
    """SIGKILL each worker; the master starts new ones (new pids). Their counts must not be lost."""
    old = workers(service)
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: len(workers(service) - old) == 2, timeout=30, what="two new workers")
    wait_until(lambda: call(service.url, "GET", "/health").status == 200, timeout=30, what="health")


def scrape(service) -> str:
    answer = call(service.url, "GET", "/metrics")
    assert answer.status == 200
    return answer.body.decode()


def test_request_lines_and_metrics_cover_every_worker(service, consul_agent):
    wait_until(lambda: consul_agent.catalog_instances(SERVICE_NAME), timeout=30, what="registration")
    service_id = consul_agent.catalog_instances(SERVICE_NAME)[0]["ServiceID"]
    barrier = threading.Barrier(8)

    def post(n):
        if n % 20 < 8:
            barrier.wait(timeout=30)
        request_id = f"live-{n}-{uuid.uuid4().hex[:8]}"
        answer = call(
            service.url,
            "POST",
            "/conversations/1/messages",
            {"content": f"m{n}"},
            {"User-Id": "1", "X-Request-Id": request_id},
        )
        return request_id, answer

    sent = []
    for batch in (range(20), range(20, 40)):
        with ThreadPoolExecutor(max_workers=8) as pool:
            sent += list(pool.map(post, batch))
        if batch[0] == 0:
            replace_every_worker(service)  # the second batch is served by other processes
    assert {answer.status for _, answer in sent} == {201}
    assert all(answer.headers["X-Request-Id"] == request_id for request_id, answer in sent)

    lines = wait_until(
        lambda: (lines := request_lines(service)) and len(lines) >= 40 and lines, timeout=10, what="40 request lines"
    )
    # One format on the stream: gunicorn's own lines, discovery's and the request log are all JSON.
    assert all(json.loads(raw) for raw in service.log_path.read_text().splitlines() if raw.strip())
    posts = {line["request_id"]: line for line in lines if line["method"] == "POST"}
    for request_id, _ in sent:
        line = posts[request_id]
        assert (line["path"], line["route"], line["status"]) == (
            "/conversations/1/messages",
            "/conversations/{conversation_id}/messages",
            201,
        )
        assert line["instance"] == service_id
    first, second = ({posts[request_id]["pid"] for request_id, _ in half} for half in (sent[:20], sent[20:]))
    assert first.isdisjoint(second), "the second batch was served by new worker processes"

    # Whichever worker answers, a scrape counts every worker's requests.
    labels = {"method": "POST", "route": "/conversations/{conversation_id}/messages", "status": "201"}
    for _ in range(6):
        text = scrape(service)
        assert sample(text, "messenger_http_requests_total", **labels) == 40
        assert sample(text, "messenger_http_request_duration_seconds_count", **labels) == 40
        assert (
            sample(text, "messenger_outbox_backlog") == OutboxEvent.objects.filter(sent_at__isnull=True).count() == 40
        )
        assert sample(text, "messenger_database_up") == 1
        assert sample(text, "messenger_consul_registered") == 1


def test_consul_gauge_drops_to_zero_when_the_agent_forgets_the_instance(service, consul_agent):
    wait_until(lambda: sample(scrape(service), "messenger_consul_registered") == 1, timeout=30, what="registered gauge")
    consul_agent.stop()
    assert sample(scrape(service), "messenger_consul_registered") == 0
