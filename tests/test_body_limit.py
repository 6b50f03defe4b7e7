"""JSON_BODY_LIMIT against the real server: the seed's 20b / 27b / 100kb examples, chunked bodies too.

These run gunicorn itself (not Django's test client), because how a server
hands over a chunked body without Content-Length is part of what is tested.
"""

import http.client
import json

import pytest

from tests.support.service import ServiceProcess

SMALL = b'{ "text": "hello" }'  # 19 bytes: the seed's first curl
LARGER = b'{ "text": "hello, world" }'  # 26 bytes: the seed's second curl
CONTRACT_ERROR = {"error": "Conversation must have 2 unique users"}


@pytest.fixture
def serve(tmp_path):
    started = []

    def start(limit: str) -> ServiceProcess:
        service = ServiceProcess(
            {"JSON_BODY_LIMIT": limit, "DATA_DIR": str(tmp_path / "data")}, tmp_path / f"service-{limit}.log"
        ).start()
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


def post(service, body: bytes, chunked: bool = False) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
    headers = {"Content-Type": "application/json"}
    if chunked:
        conn.request(
            "POST",
            "/conversations",
            body=iter([body[: len(body) // 2], body[len(body) // 2 :]]),
            headers=headers,
            encode_chunked=True,
        )
    else:
        conn.request("POST", "/conversations", body=body, headers=headers)
    response = conn.getresponse()
    payload = json.loads(response.read())
    conn.close()
    return response.status, payload


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_seed_body_limit_examples(serve, chunked):
    at_20 = serve("20b")
    assert post(at_20, SMALL, chunked) == (400, CONTRACT_ERROR)
    status, body = post(at_20, LARGER, chunked)
    assert status == 413
    assert body == {"error": "Request body is larger than JSON_BODY_LIMIT (20 bytes)"}

    at_27 = serve("27b")
    assert post(at_27, LARGER, chunked) == (400, CONTRACT_ERROR)


def test_100kb_limit_accepts_100kb_and_refuses_one_byte_more(serve):
    service = serve("100kb")
    padding = 100 * 1024 - len(b'{"pad": ""}')
    exact = b'{"pad": "' + b"a" * padding + b'"}'
    assert len(exact) == 100 * 1024
    assert post(service, exact) == (400, CONTRACT_ERROR)
    assert post(service, exact, chunked=True) == (400, CONTRACT_ERROR)
    over = b'{"pad": "' + b"a" * (padding + 1) + b'"}'
    assert post(service, over)[0] == 413
    assert post(service, over, chunked=True)[0] == 413
