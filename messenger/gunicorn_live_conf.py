"""gunicorn settings of the live listener (messenger/live_listener.py starts it, on a socket it binds):

gunicorn -c messenger/gunicorn_live_conf.py --bind fd://N messenger.asgi_live:application
"""

import asyncio
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
asgi_lifespan = "on"  # the app opens its LISTEN connection at start-up
graceful_timeout = int(_config.GRACEFUL_TIMEOUT)
# The rest as the WSGI server has them (messenger/gunicorn_conf.py says why); the access log is the app's own.
keepalive = 75
loglevel = _config.LOG_LEVEL.lower()
proc_name = "messenger-live"
control_socket_disable = True
limit_request_line = gunicorn_refusals.LIMIT_REQUEST_LINE
limit_request_fields = gunicorn_refusals.LIMIT_REQUEST_FIELDS
limit_request_field_size = gunicorn_refusals.LIMIT_REQUEST_FIELD_SIZE


_tasks: set = set()


async def _listen_with_gunicorns_backlog(worker) -> None:
    """gunicorn's asgi worker hands its socket to asyncio's create_server without
    a backlog, and asyncio then calls listen(100): a burst of waiters beyond 100
    (a thousand clients reconnecting after a deploy) had their SYNs dropped and
    NGINX timed out connecting. Once the server is up, listen again with
    gunicorn's own `backlog` setting (2048)."""
    while not worker.servers and worker.alive:
        await asyncio.sleep(0.05)
    for listener in worker.sockets:
        listener.sock.listen(worker.cfg.backlog)


def post_worker_init(worker):
    """SIGTERM answers every waiter before gunicorn's graceful stop waits for their connections."""
    from messenger.asgi_live import application

    def drain_then_stop():
        application.drain()
        worker.handle_exit_signal()

    worker.loop.add_signal_handler(signal.SIGTERM, drain_then_stop)
    _tasks.add(worker.loop.create_task(_listen_with_gunicorns_backlog(worker)))  # held: asyncio keeps tasks weakly


logconfig_dict = gunicorn_logging(log_format=_config.LOG_FORMAT, level=_config.LOG_LEVEL)
