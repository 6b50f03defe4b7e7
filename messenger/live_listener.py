"""The instance's live listener: a gunicorn ASGI server beside its WSGI one.

Long-polls and event streams hold a request open for seconds to hours. Under
gunicorn's gthread worker each would pin a thread, so a few hundred idle
waiters would stop the instance serving; Django's ASGI handler would free
them, but ENVIRONMENT.md measured it at about 3x gthread's CPU for ordinary
routes. So an instance is two gunicorn servers: the WSGI one for every route,
and this one (gunicorn's `asgi` worker class, `messenger.asgi_live`, the app of `conversations.live`) for the
live routes and the plain JSON reads of a page or the list, which NGINX sends here.

The WSGI master binds the live socket when it reads its configuration (a free
port unless LIVE_PORT names one), advertises the port in its Consul entry
(`live_port` in the service's meta, which the load balancer's upstream list
reads), starts the live server on that socket at once (its import of Django
runs beside the master's preload), starts its own workers only once the live
server answers, and stops it when it stops: one process tree per instance, in every runtime that starts
`gunicorn -c messenger/gunicorn_conf.py` (local processes, containers, hosts).
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import signal
import socket
import subprocess
import sys
from pathlib import Path

from core.config import Config

APPLICATION = "messenger.asgi_live:application"
CONFIG_FILE = Path(__file__).with_name("gunicorn_live_conf.py")
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: a SIGKILLed WSGI master takes its live server with it (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class LiveListener:
    def __init__(self, config: Config):
        family = socket.AF_INET6 if ":" in config.BIND_HOST else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((config.BIND_HOST, config.LIVE_PORT or 0))
        self.socket.listen(2048)
        self.socket.set_inheritable(True)
        self.port: int = self.socket.getsockname()[1]
        self.host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(config.BIND_HOST, config.BIND_HOST)
        self.graceful_timeout = float(config.GRACEFUL_TIMEOUT)
        self.process: subprocess.Popen | None = None
        self._stopping = False

    @staticmethod
    def wanted(config: Config) -> bool:
        """Live delivery serves instances behind the load balancer: `make run` (PGHOST unset, the embedded PostgreSQL) starts none."""
        return bool(config.PGHOST)

    def start(self) -> None:
        fd = self.socket.fileno()
        command = [sys.executable, "-m", "gunicorn", "-c", str(CONFIG_FILE), "--bind", f"fd://{fd}", APPLICATION]
        self.process = subprocess.Popen(command, pass_fds=(fd,), preexec_fn=_die_with_parent)
        # Only the live server holds the socket from now on (the WSGI workers fork
        # later): when it exits the port refuses connections, which NGINX passes
        # to the next instance, instead of queueing them where nobody accepts.
        self.socket.close()

    def exited(self) -> bool:
        """Whether the live server ended on its own (not through `stop`): a crash, a kill, a worker that
        failed to boot. Its status is gunicorn's to have read: the master's reaping takes any child."""
        return self.process is not None and not self._stopping and self.process.poll() is not None

    def stop(self) -> None:
        """Answer every waiter, then stop (SIGTERM: conversations.live drains, gunicorn finishes gracefully)."""
        self._stopping = True
        if self.process is None or self.process.poll() is not None:
            return
        self.wait_serving()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=self.graceful_timeout + 5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def wait_serving(self) -> None:
        """Until the live server answers a request (bounded by GRACEFUL_TIMEOUT): before the instance's
        workers start, so it passes its check only once its reads are served; and before a SIGTERM, which
        while it still starts would stop it before it drains and reset the connections queued on its socket."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.graceful_timeout)
        try:
            conn.request("GET", "/health")
            conn.getresponse().read()
        except (OSError, http.client.HTTPException):
            pass  # not serving and not going to: it is stopped all the same
        finally:
            conn.close()
