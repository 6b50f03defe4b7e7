"""The test-owned TCP proxy forwards, and its two kinds of cut behave like the outages they stand for."""

import socket
import socketserver
import threading
import time

import pytest

from tests.support.tcp_proxy import TcpProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self):
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except ConnectionResetError:
            pass  # what the proxy's cuts do to the connection: what these tests cause, not a failure to print


@pytest.fixture
def echo_server():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(echo_server):
    with TcpProxy(echo_server) as proxy:
        yield proxy


def roundtrip(port: int, payload: bytes, timeout: float = 2.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        received = b""
        while len(received) < len(payload):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def test_proxy_forwards_bytes_both_ways(proxy):
    payload = bytes(range(256)) * 1000
    assert roundtrip(proxy.port, payload) == payload


def test_reset_cut_drops_open_connections_and_refuses_new_ones_fast(proxy):
    held = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
    held.sendall(b"ping")
    assert held.recv(4) == b"ping"

    proxy.cut("reset")
    with pytest.raises(OSError):  # reset by peer, or an orderly close seen as b""
        held.sendall(b"more")
        if held.recv(4) == b"":
            raise ConnectionResetError("closed")
    held.close()

    started = time.monotonic()
    with pytest.raises(OSError):
        if roundtrip(proxy.port, b"x") == b"":
            raise ConnectionResetError("closed")
    assert time.monotonic() - started < 1.0

    proxy.restore()
    assert roundtrip(proxy.port, b"back") == b"back"


def assert_held_until_restored(proxy, sock, payload: bytes) -> None:
    """`payload`, already sent through a blackholed proxy, echoes back only after restore."""
    sock.settimeout(0.5)
    with pytest.raises(socket.timeout):
        sock.recv(len(payload))
    proxy.restore()
    sock.settimeout(2)
    assert sock.recv(len(payload)) == payload


def test_blackhole_cut_holds_bytes_of_open_connections_until_restored(proxy):
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as sock:
        sock.sendall(b"one")
        assert sock.recv(3) == b"one"
        proxy.cut("blackhole")
        sock.sendall(b"two")
        assert_held_until_restored(proxy, sock, b"two")


def test_new_connection_during_blackhole_connects_but_gets_no_answer_until_restored(proxy):
    proxy.cut("blackhole")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as sock:
        sock.sendall(b"hello")
        assert_held_until_restored(proxy, sock, b"hello")


def test_stop_closes_proxied_connections(echo_server):
    proxy = TcpProxy(echo_server).start()
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
    sock.sendall(b"a")
    assert sock.recv(1) == b"a"
    proxy.stop()
    assert proxy.connections == 0
    with pytest.raises(OSError):
        sock.sendall(b"b")
        if sock.recv(1) == b"":
            raise ConnectionResetError("closed")
    sock.close()
