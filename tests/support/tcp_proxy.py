"""A loopback TCP proxy that a test owns and can cut and restore: outages on demand.

Put it in front of any TCP server (RabbitMQ, PostgreSQL, ...) and point the code
under test at `proxy.port`. Two ways to cut it:

- `cut("reset")`: the server is down. Open connections are reset and new ones
  are reset as soon as they arrive, so clients fail fast (like a stopped server).
- `cut("blackhole")`: the network is partitioned. Connections open (the kernel
  accepts them) but no byte passes either way, so clients hang until their own
  timeouts; held connections resume when the proxy is restored.

`restore()` passes traffic again. Each proxied connection is two pump threads;
every wait is bounded, and `stop()` closes everything.
"""

from __future__ import annotations

import select
import socket
import struct
import threading

RESET = "reset"
BLACKHOLE = "blackhole"
_POLL = 0.05  # how often idle threads look at the proxy's state


def _reset(sock: socket.socket) -> None:
    """Close with an RST, as a dead server's kernel would."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class TcpProxy:
    """Forward 127.0.0.1:`port` to `target_host`:`target_port` until told otherwise."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1", listen_port: int = 0):
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", listen_port), backlog=128)
        self.port = self._listener.getsockname()[1]
        self._mode: str | None = None  # None while traffic flows
        self._state = threading.Condition()
        self._pairs: set[_Pair] = set()
        self._stopped = False
        self._accepted = 0
        self._thread = threading.Thread(target=self._accept_loop, name=f"tcp-proxy-{self.port}", daemon=True)

    # --- control ---------------------------------------------------------------

    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def is_cut(self) -> bool:
        return self._mode is not None

    @property
    def connections(self) -> int:
        """Client connections currently proxied (or held, while blackholed)."""
        with self._state:
            return len(self._pairs)

    @property
    def accepted(self) -> int:
        """Client connections accepted since start, including those reset while cut."""
        return self._accepted

    def cut(self, mode: str = RESET) -> None:
        if mode not in (RESET, BLACKHOLE):
            raise ValueError(f"mode must be {RESET!r} or {BLACKHOLE!r}")
        with self._state:
            self._mode = mode
            pairs = list(self._pairs) if mode == RESET else []
            self._pairs.difference_update(pairs)
            self._state.notify_all()
        for pair in pairs:
            pair.reset()

    def restore(self) -> None:
        with self._state:
            self._mode = None
            self._state.notify_all()

    def stop(self) -> None:
        with self._state:
            self._stopped = True
            pairs = list(self._pairs)
            self._pairs.clear()
            self._state.notify_all()
        self._listener.close()
        for pair in pairs:
            pair.reset()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    # --- machinery -------------------------------------------------------------

    def _wait_while_blackholed(self) -> bool:
        """Block while blackholed; False once the proxy stopped or was reset."""
        with self._state:
            while self._mode == BLACKHOLE and not self._stopped:
                self._state.wait(_POLL)
            return not self._stopped and self._mode is None

    def _accept_loop(self) -> None:
        while not self._stopped:
            try:
                ready, _, _ = select.select([self._listener], [], [], _POLL)
                if not ready:
                    continue
                client, _ = self._listener.accept()
            except OSError:
                return  # listener closed by stop()
            self._accepted += 1
            threading.Thread(target=self._open, args=(client,), daemon=True).start()

    def _open(self, client: socket.socket) -> None:
        """Connect one client upstream once traffic may flow, then pump both ways."""
        if self._mode == RESET or not self._wait_while_blackholed():
            _reset(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _reset(client)
            return
        for sock in (client, upstream):
            # Forward small writes at once, as the endpoints asked; Nagle here would add 40 ms stalls.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(None)
        pair = _Pair(client, upstream)
        with self._state:
            if self._stopped or self._mode == RESET:
                pair.reset()
                return
            self._pairs.add(pair)
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(pair, source, sink), daemon=True).start()

    def _pump(self, pair: _Pair, source: socket.socket, sink: socket.socket) -> None:
        try:
            while self._wait_while_blackholed():
                ready, _, _ = select.select([source], [], [], _POLL)
                if not ready or self._mode is not None:
                    continue  # re-check the state before moving a byte
                data = source.recv(65536)
                if not data:  # half-close: pass the FIN on, keep the other direction open
                    sink.shutdown(socket.SHUT_WR)
                    if pair.one_direction_done():
                        break
                    return
                sink.sendall(data)
        except (OSError, ValueError):
            pass  # the peer or cut() closed a socket
        with self._state:
            self._pairs.discard(pair)
        pair.close()


class _Pair:
    """A client socket and its upstream socket; closed when both directions end or either fails."""

    def __init__(self, client: socket.socket, upstream: socket.socket):
        self.client, self.upstream = client, upstream
        self._done = 0
        self._lock = threading.Lock()

    def __iter__(self):
        return iter((self.client, self.upstream))

    def one_direction_done(self) -> bool:
        """Count a finished direction; True when it was the second."""
        with self._lock:
            self._done += 1
            return self._done == 2

    def reset(self) -> None:
        _reset(self.client)
        _reset(self.upstream)

    def close(self) -> None:
        for sock in self:
            try:
                sock.close()
            except OSError:
                pass
