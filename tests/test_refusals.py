"""Every refusal a client can see is the contract's `{"error": ...}` JSON with a 4xx, whichever layer answers.

Three layers can refuse a request: NGINX (a request it cannot parse, or past its
buffers), gunicorn (past its request-line and header limits, or malformed
framing), and Django (everything else). Each case below is sent as raw bytes, far
past the limits where it has one (lengths, digits, nesting, header counts), both
straight to a live gunicorn and through the load balancer's NGINX in front of
it; the status each layer owes is part of the case. Nothing may be a 5xx, an
HTML page or a traceback, and no refused request may store a row.
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass

import psycopg
import pytest

from core.http import gunicorn_keepalive, gunicorn_refusals
from tests.support.infrastructure import fresh_database, migrated_database
from tests.support.load_balancer import nginx_in_front_of
from tests.support.processes import REPO_ROOT
from tests.support.service import ServiceProcess, call, manage

pytestmark = pytest.mark.slow

JSON = "Content-Type: application/json\r\n"
USER = "User-Id: 1\r\n"


def request(method: str, target: str, headers: str = "", body: bytes = b"") -> bytes:
    """A well-framed HTTP/1.1 request with `Connection: close` (a Content-Length when it has a body)."""
    length = f"Content-Length: {len(body)}\r\n" if body else ""
    return (
        f"{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}{length}\r\n".encode("latin-1")
        + body
    )


def chunked(target: str, headers: str, chunks: bytes) -> bytes:
    return (
        f"POST {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}Transfer-Encoding: chunked\r\n\r\n"
    ).encode() + chunks


@dataclass(frozen=True)
class Case:
    name: str
    raw: bytes
    direct: int  # the status gunicorn and Django owe
    through_lb: int  # the status a client of the load balancer sees


def filler_headers(count: int) -> str:
    return "".join(f"X-Filler-{i}: v\r\n" for i in range(count))


CASES = [
    # The request line itself.
    Case("garbage request line", b"GARBAGE\r\n\r\n", 400, 400),
    Case("binary method", b"\x00\x01\x02 / HTTP/1.1\r\nHost: localhost\r\n\r\n", 400, 400),
    Case("unknown HTTP version", b"GET /health HTTP/9.9\r\nHost: localhost\r\nConnection: close\r\n\r\n", 400, 400),
    Case("request line past gunicorn's limit", request("GET", "/conversations?" + "a" * 5000), 414, 414),
    Case("request line 100k", request("GET", "/" + "a" * 100_000), 414, 414),
    # Headers: one too long, too many, malformed.
    Case("one header 9k", request("GET", "/conversations", "X-Big: " + "a" * 9000 + "\r\n"), 431, 431),
    Case("one header 60k", request("GET", "/conversations", "X-Big: " + "a" * 60_000 + "\r\n"), 431, 431),
    Case("150 headers", request("GET", "/conversations", filler_headers(150)), 431, 431),
    Case("2000 headers", request("GET", "/conversations", filler_headers(2000)), 400, 431),
    Case("space in a header name", request("GET", "/health", "Bad Header: v\r\n"), 400, 400),
    Case("invalid Host", request("GET", "/conversations", "Host: bad host!\r\n"), 400, 400),
    # Numbers far past what any id, index or limit can be.
    Case("User-Id of 5,000 digits", request("GET", "/conversations", "User-Id: " + "9" * 5000 + "\r\n"), 400, 400),
    Case(
        "User-Id of 5,000 zeros then 1 is not refused for its length",
        request("GET", "/conversations/1/messages", "User-Id: " + "0" * 5000 + "x\r\n"),
        400,
        400,
    ),
    Case("path id of 3,000 digits", request("GET", "/conversations/" + "9" * 3000 + "/messages"), 400, 400),
    Case("limit of 3,000 digits", request("GET", "/conversations/1/messages?limit=" + "9" * 3000), 400, 400),
    Case(
        "after_index of 3,000 digits", request("GET", "/conversations/1/messages?after_index=" + "9" * 3000), 400, 400
    ),
    Case(
        "participant id of 5,000 digits",
        request("POST", "/conversations", JSON, b'{"participant_ids":[' + b"9" * 5000 + b",2]}"),
        400,
        400,
    ),
    Case(
        "index of 5,000 digits",
        request("POST", "/conversations/1/view_horizon", JSON + USER, b'{"index":' + b"9" * 5000 + b"}"),
        400,
        400,
    ),
    Case("index 1e400", request("POST", "/conversations/1/view_horizon", JSON + USER, b'{"index":1e400}'), 400, 400),
    # Bodies: nesting, size, framing.
    Case(
        "JSON nested 50,000 deep",
        request("POST", "/conversations/1/messages", JSON + USER, b"[" * 50_000 + b"]" * 50_000),
        400,
        400,
    ),
    Case(
        "body past JSON_BODY_LIMIT",
        request("POST", "/conversations/1/messages", JSON + USER, b'{"content":"' + b"x" * 200_000 + b'"}'),
        413,
        413,
    ),
    Case(
        "body past the load balancer's cap",
        request("POST", "/conversations/1/messages", JSON + USER, b'{"content":"' + b"x" * 1_100_000 + b'"}'),
        413,
        413,
    ),
    Case(
        "Content-Length of 50 digits",
        b"POST /conversations HTTP/1.1\r\nHost: localhost\r\nContent-Length: " + b"9" * 50 + b"\r\n\r\n{}",
        400,
        400,
    ),
    Case(
        "negative Content-Length",
        b"POST /conversations HTTP/1.1\r\nHost: localhost\r\nContent-Length: -5\r\n\r\n{}",
        400,
        400,
    ),
    Case(
        "chunk without its CRLF",
        chunked("/conversations/1/messages", JSON + USER, b'5\r\n{"a":XX\r\n0\r\n\r\n'),
        400,
        400,
    ),
    Case(
        "unsupported Transfer-Encoding",
        b"POST /conversations HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip\r\n\r\n",
        400,
        400,
    ),
    Case(
        "Idempotency-Key of 7,000 characters",
        request(
            "POST",
            "/conversations/1/messages",
            JSON + USER + "Idempotency-Key: " + "k" * 7000 + "\r\n",
            b'{"content":"x"}',
        ),
        400,
        400,
    ),
    Case(
        "Content-Type with 1,500 parameters",
        request("POST", "/conversations", "Content-Type: application/json;" + "a=b;" * 1500 + "\r\n", b"{}"),
        415,
        415,
    ),
    Case("TRACE", request("TRACE", "/conversations"), 405, 405),
]


def send(port: int, raw: bytes, timeout: float = 15) -> tuple[int, dict[str, str], bytes]:
    """Send `raw` and read the answer until the server closes: (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may refuse and close before it has read everything
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return int(status_line.split(" ")[1]), headers, body


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size, _, rest = body.partition(b"\r\n")
        if not (length := int(size, 16)):
            break
        out, body = out + rest[:length], rest[length + 2 :]
    return out


@pytest.fixture(scope="module")
def database():
    """A migrated database of this module's own, with the seed users and conversation 1 between users 1 and 2."""
    name = fresh_database(f"{os.environ['PGDATABASE']}_refusals")
    env = {"PGHOST": "127.0.0.1", "PGUSER": "postgres", "PGDATABASE": migrated_database(name)}
    seeded = manage("seed", env=env)
    assert seeded.returncode == 0, seeded.stdout + seeded.stderr
    return env


@pytest.fixture(scope="module")
def service(database, tmp_path_factory):
    # LOG_LEVEL=INFO: the request log line of every answer, to read back below.
    process = ServiceProcess(
        {**database, "WEB_THREADS": "2", "LOG_LEVEL": "INFO"}, tmp_path_factory.mktemp("refusals") / "service.log"
    )
    process.start()
    try:
        created = call(process.url, "POST", "/conversations", {"participant_ids": [1, 2]})
        assert created.status == 201, created.body
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def load_balancer(service, tmp_path_factory):
    with nginx_in_front_of(service.port, tmp_path_factory.mktemp("nginx")) as nginx:
        yield nginx


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("layer", ["gunicorn", "load balancer"])
def test_every_refusal_is_json_with_its_4xx(case, layer, service, load_balancer):
    """The answer is the case's 4xx, `application/json`, and a body of exactly one `error` sentence."""
    port, expected = (service.port, case.direct) if layer == "gunicorn" else (load_balancer.port, case.through_lb)

    status, headers, body = send(port, case.raw)

    assert (status, headers.get("content-type", "").split(";")[0]) == (expected, "application/json"), body[:300]
    error = json.loads(body)
    assert list(error) == ["error"] and isinstance(error["error"], str) and error["error"], error


def test_gunicorn_quotes_its_own_limit_in_the_refusal(service):
    """The 414 says how long the line was and what gunicorn accepts (the limit declared in gunicorn_refusals)."""
    _, _, body = send(service.port, request("GET", "/conversations?" + "a" * 5000))

    assert json.loads(body) == {
        "error": f"Request line length (5028) exceeds limit ({gunicorn_refusals.LIMIT_REQUEST_LINE})"
    }


def keep_alive_request(method: str, target: str, headers: str = "", body: bytes = b"") -> bytes:
    """`request` without `Connection: close`: HTTP/1.1's default, a connection kept for the next request."""
    return request(method, target, headers, body).replace(b"Connection: close\r\n", b"", 1)


# A body the service refuses by its Content-Length alone, without reading it (past JSON_BODY_LIMIT, 100kb).
OVER_THE_LIMIT = b'{"content":"' + b"x" * 200_000 + b'"}'


def read_to_the_end(sock: socket.socket) -> bytes:
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def test_a_refused_body_is_read_to_its_end_and_its_connection_serves_the_next_request(service):
    """A body refused unread (past JSON_BODY_LIMIT) is read after the answer, up to NGINX's cap, so the connection
    the answer kept alive serves the next request (core/http/gunicorn_keepalive.py)."""
    with socket.create_connection(("127.0.0.1", service.port), timeout=15) as sock:
        sock.sendall(keep_alive_request("POST", "/conversations/1/messages", JSON + USER, OVER_THE_LIMIT))
        sock.sendall(request("GET", "/health"))  # on the same connection, after the refused one
        answer = read_to_the_end(sock)
    first_head = answer.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
    assert first_head.startswith("http/1.1 413") and "connection: close" not in first_head, first_head
    assert answer.count(b"HTTP/1.1 ") == 2 and b"HTTP/1.1 200" in answer, answer[-500:]


def test_a_body_longer_than_gunicorn_reads_is_answered_with_connection_close(service):
    """Past what gunicorn reads of an unread body (only a client that bypasses NGINX can send one), the answer
    says the connection closes, and it does."""
    declared = gunicorn_keepalive.DRAINED_AT_MOST + 1
    head = (
        f"POST /conversations/1/messages HTTP/1.1\r\nHost: localhost\r\n{JSON}{USER}Content-Length: {declared}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", service.port), timeout=15) as sock:
        sock.sendall(head.encode("latin-1") + b'{"content":"')
        answer = read_to_the_end(sock)  # ends: the server closes
    answer_head = answer.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
    assert answer_head.startswith("http/1.1 413") and "\r\nconnection: close" in answer_head, answer_head


def test_gunicorn_reads_every_body_nginx_passes():
    """NGINX's client_max_body_size is no more than what gunicorn reads of an unread body."""
    conf = (REPO_ROOT / "load-balancer" / "messenger-server.conf").read_text()
    megabytes = int(re.search(r"^\s*client_max_body_size (\d+)m;", conf, re.MULTILINE).group(1))
    assert megabytes * 1024 * 1024 <= gunicorn_keepalive.DRAINED_AT_MOST


def test_a_refused_long_body_leaves_the_load_balancer_no_broken_connection_for_the_next_post(service, load_balancer):
    """NGINX keeps its connections to the instance for the next client. One an over-long body's refusal left
    announced as kept but closed after it, and the next POST sent on it was answered 502 (CI saw it twice)."""
    refused = request("POST", "/conversations/1/messages", JSON + USER, OVER_THE_LIMIT)
    after = request("POST", "/conversations", JSON, b'{"participant_ids":[1,1]}')  # refused 400: stores nothing
    for attempt in range(30):
        assert send(load_balancer.port, refused)[0] == 413
        status, _, body = send(load_balancer.port, after)
        assert status == 400, (attempt, body)


def test_no_refused_request_stored_anything_or_failed_inside_the_service(service, load_balancer, database):
    """Every case sent once more to both layers, then: no message row exists, and the request log has no 5xx and
    no traceback. (The cases above are spread over the xdist workers, each with the module's service of its own:
    this worker's log need not hold them.)"""
    for case in CASES:
        send(service.port, case.raw)
        send(load_balancer.port, case.raw)
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname=database["PGDATABASE"]) as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone() == (0,)
    log = service.log_path.read_text()
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    statuses = [record["status"] for record in records if record.get("msg") == "request"]
    assert len(statuses) >= 20 and max(statuses) < 500, log[-3000:]
    assert "Internal Server Error" not in log and "Traceback" not in log, log[-3000:]


def test_gunicorn_refusal_body_is_ascii_json_cut_to_a_readable_length():
    body = gunicorn_refusals.error_body(400, "Bad Request", "Invalid header: '" + "é" * 500 + "'")

    text = json.loads(body.decode("ascii"))["error"]
    assert text.startswith("Invalid header: '") and text.endswith("...")
    assert len(text) == gunicorn_refusals.MAX_DETAIL + 3
    assert json.loads(gunicorn_refusals.error_body(500, "Internal Server Error", "")) == {
        "error": "Internal server error"
    }
