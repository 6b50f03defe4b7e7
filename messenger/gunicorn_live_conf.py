"""gunicorn settings of the live listener (messenger/live_listener.py forks it from the preloaded WSGI master, on a
socket that master binds). The same server by hand:

gunicorn -c messenger/gunicorn_live_conf.py --bind fd://N messenger.asgi_live:application
"""

import asyncio
import os
import resource
import signal

from core import config as config_schema
from core.http import gunicorn_refusals
from core.logging import gunicorn_logging

_config = config_schema.load()

worker_class = "asgi"
# One event loop holds every waiter of the instance; more processes would each
# need their own LISTEN connection and Django.
workers = 1
worker_connections = 20000

asgi_loop = "auto"  # uvloop (requirements/production.txt), else asyncio's own
asgi_lifespan = "on"  # the app opens its LISTEN connection at start-up
graceful_timeout = int(_config.GRACEFUL_TIMEOUT)
# The rest as the WSGI server has them (messenger/gunicorn_conf.py says why); the access log is the app's own.
keepalive = 75
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
loglevel = _config.LOG_LEVEL.lower()
proc_name = "messenger-live"
control_socket_disable = True
limit_request_line = gunicorn_refusals.LIMIT_REQUEST_LINE
limit_request_fields = gunicorn_refusals.LIMIT_REQUEST_FIELDS
limit_request_field_size = gunicorn_refusals.LIMIT_REQUEST_FIELD_SIZE


def _allow_a_file_per_connection() -> None:
    """Each waiter holds a socket: raise this process's soft limit on open files (the worker inherits
    it) towards worker_connections, up to the hard limit. Containers often start with a soft limit of
    1024, which would refuse the 1,025th waiter; only the hard limit is the runtime's to set."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = worker_connections + 1024  # and the rest: the database, logs, the interpreter's own
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


_allow_a_file_per_connection()


_tasks: set = set()


async def _serving(worker) -> None:
    """Until gunicorn's asgi worker serves its sockets (it creates its servers after the app's start-up)."""
    while not worker.servers and worker.alive:
        await asyncio.sleep(0.05)


async def _listen_with_gunicorns_backlog(worker) -> None:
    """gunicorn's asgi worker hands its socket to asyncio's create_server without
    a backlog, and asyncio then calls listen(100): a burst of waiters beyond 100
    (a thousand clients reconnecting after a deploy) had their SYNs dropped and
    NGINX timed out connecting. Once the server is up, listen again with
    gunicorn's own `backlog` setting (2048)."""
    await _serving(worker)
    for listener in worker.sockets:
        listener.sock.listen(worker.cfg.backlog)


async def _stop_accepting_then_exit(worker) -> None:
    """Close the listening socket without cutting a connection the kernel already accepted on it.

    Closing a listening socket resets every connection still in its accept
    queue: a waiter that connected a moment before the stop (or while this
    worker was still starting: it queues until the server exists) would get a
    reset instead of its page. So: wait for the server, then in one step
    accept whatever is queued and close the socket; serve what was taken (the
    app drains, so each is answered at once); and only then let gunicorn's
    graceful stop wait for the open connections.
    """
    from gunicorn.asgi.protocol import ASGIProtocol

    await _serving(worker)
    loop = asyncio.get_running_loop()
    taken = []
    for listener in worker.sockets:
        while True:
            try:
                conn, _ = listener.sock.accept()
            except OSError:  # BlockingIOError: nothing more queued
                break
            conn.setblocking(False)
            taken.append(conn)
    for server in worker.servers:
        server.close()
    adopted = [loop.connect_accepted_socket(lambda: ASGIProtocol(worker), conn) for conn in taken]
    await asyncio.gather(*adopted, return_exceptions=True)
    # asyncio's own accept may have taken connections in the loop iteration
    # before this one; their protocol exists two iterations later. Counted
    # then (worker.nr_conns), gunicorn's graceful stop waits for them too.
    for _ in range(3):
        await asyncio.sleep(0)
    worker.handle_exit_signal()


def post_worker_init(worker):
    """SIGTERM answers every waiter before gunicorn's graceful stop waits for their connections."""
    from messenger.asgi_live import application

    def drain_then_stop():
        application.drain()
        _tasks.add(worker.loop.create_task(_stop_accepting_then_exit(worker)))

    worker.loop.add_signal_handler(signal.SIGTERM, drain_then_stop)
    _tasks.add(worker.loop.create_task(_listen_with_gunicorns_backlog(worker)))  # held: asyncio keeps tasks weakly


logconfig_dict = gunicorn_logging(log_format=_config.LOG_FORMAT, level=_config.LOG_LEVEL)
logger_class = "core.http.gunicorn_logger.Logger"  # no access records built for nothing
