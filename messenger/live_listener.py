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
reads), forks the live server once it has preloaded the app, starts its own
workers only once the live server answers, and stops it when it stops: one
process tree per instance, in every runtime that starts
`gunicorn -c messenger/gunicorn_conf.py` (local processes, containers, hosts).

Forked, not started as a new interpreter: the live server then shares the
pages of Django and the app the master has imported (copy-on-write) instead of
importing them again into memory of its own, and needs no second import at
start-up. Its processes are named `messenger-live` (their `comm`, what `ps -o
comm` and `/proc/<pid>/comm` show), since their command line is the master's.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import select
import signal
import socket
import sys
from pathlib import Path

from core.config import Config

CONFIG_FILE = Path(__file__).with_name("gunicorn_live_conf.py")
PROCESS_NAME = b"messenger-live"  # the live server's processes' comm (at most 15 bytes)
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15


def _prctl(option: int, argument: int | bytes) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(option, argument)


def _serve(fd: int) -> None:
    """In the forked child: gunicorn's arbiter with gunicorn_live_conf.py on the live socket; never returns."""
    from gunicorn.app.base import Application

    class LiveServer(Application):
        def init(self, parser, opts, args):
            return None

        def load_config(self) -> None:
            self.load_config_from_file(str(CONFIG_FILE))
            self.cfg.set("bind", [f"fd://{fd}"])

        def load(self):
            from messenger.asgi_live import application

            return application

    LiveServer().run()


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
        self.pid: int | None = None
        self._ended: int | None = None  # a pidfd of the live server's master
        self._stopping = False

    @staticmethod
    def wanted(config: Config) -> bool:
        """Live delivery serves instances behind the load balancer: `make run` (PGHOST unset, the embedded PostgreSQL) starts none."""
        return bool(config.PGHOST)

    def start(self, inherited: list[int]) -> None:
        """Fork the live server from this (the WSGI master's) process, once it has preloaded the app.

        `inherited` are descriptors of the WSGI master the child must not hold (its listening socket:
        held by the child too, it would go on queueing connections nobody accepts once the master is
        gone). Only the child holds the live socket from then on: when it exits, the port refuses
        connections, which NGINX passes to the next instance.
        """
        fd = self.socket.fileno()
        # What only the live server runs, imported here first so that its pages are shared too.
        import gunicorn.workers.gasgi  # noqa: F401

        import conversations.live.app  # noqa: F401

        pid = os.fork()
        if pid == 0:  # the child: never returns into the master's code
            status = 1
            try:
                _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)  # a SIGKILLed master takes its live server with it
                _prctl(_PR_SET_NAME, PROCESS_NAME)
                for descriptor in inherited:
                    with contextlib.suppress(OSError):
                        os.close(descriptor)
                _serve(fd)
                status = 0
            except SystemExit as exit_:
                status = exit_.code if isinstance(exit_.code, int) else 1
            except BaseException:  # noqa: BLE001 - said on stderr, and the master sees the exit
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        self.pid = pid
        # Readable once the child has ended, whoever reaps it (gunicorn's master reaps every child).
        self._ended = os.pidfd_open(pid)
        self.socket.close()

    def _has_ended(self, timeout: float = 0) -> bool:
        return self._ended is not None and bool(select.select([self._ended], [], [], timeout)[0])

    def exited(self) -> bool:
        """Whether the live server ended on its own (not through `stop`): a crash, a kill, a worker that
        failed to boot."""
        return not self._stopping and self._has_ended()

    def stop(self) -> None:
        """Answer every waiter, then stop (SIGTERM: conversations.live drains, gunicorn finishes gracefully)."""
        self._stopping = True
        if self.pid is None or self._has_ended():
            return
        self.wait_serving()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        if not self._has_ended(timeout=self.graceful_timeout + 5):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self._has_ended(timeout=5)

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
