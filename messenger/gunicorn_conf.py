"""gunicorn settings, read from the configuration schema.

Start a serving instance with:
    gunicorn -c messenger/gunicorn_conf.py messenger.wsgi
"""

import gc
import os
import socket
from pathlib import Path

from gunicorn.errors import HaltServer

from core import config as config_schema
from core.http import gunicorn_keepalive, gunicorn_refusals
from core.logging import gunicorn_logging
from discovery import registration as discovery
from messenger import live_listener, shutdown_drain, startup_checks

_config = config_schema.load()


def _bind_free_port() -> socket.socket:
    """PORT=0: listen on a free port now, before the preloaded app reads PORT to register it.

    On a host network several instances share one address (the swarm's nodes), so none can
    be given a fixed port; gunicorn takes this socket over by its descriptor (`fd://`).
    """
    family = socket.AF_INET6 if ":" in _config.BIND_HOST else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((_config.BIND_HOST, 0))
    listener.listen(2048)
    listener.set_inheritable(True)
    os.environ["PORT"] = str(listener.getsockname()[1])
    return listener


_free_port_socket = _bind_free_port() if _config.PORT == 0 else None
if _free_port_socket is not None:
    _config = config_schema.load()


def _share_metrics_between_workers() -> str:
    """Point prometheus-client's multi-process mode at one folder for all workers.

    Each worker writes its counters to files there and a scrape of any worker
    sums them all. It must be set before the app (and so prometheus_client) is
    imported, and emptied at start so an earlier run's counts are not summed in.
    A folder made here is removed when the master exits (not when a worker does).
    """
    import atexit
    import os
    import shutil
    import tempfile
    from pathlib import Path

    directory = _config.PROMETHEUS_MULTIPROC_DIR
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        for stale in Path(directory).glob("*.db"):
            stale.unlink()
    else:
        directory = tempfile.mkdtemp(prefix="messenger-metrics-")
        master = os.getpid()

        def remove_in_master() -> None:
            if os.getpid() == master:
                shutil.rmtree(directory, ignore_errors=True)

        atexit.register(remove_in_master)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    return directory


_share_metrics_between_workers()

bind = f"fd://{_free_port_socket.fileno()}" if _free_port_socket else f"{_config.BIND_HOST}:{_config.PORT}"
workers = _config.WEB_CONCURRENCY
threads = _config.WEB_THREADS
worker_class = "gthread" if _config.WEB_THREADS > 1 else "sync"
graceful_timeout = int(_config.GRACEFUL_TIMEOUT)
timeout = 30
# Each worker proves it is alive to the master by touching a file every second; on a disk-backed
# /tmp (a container's overlay, a loaded host) that touch can block for as long as the disk stalls,
# and the master then kills a worker mid-request after `timeout` (gunicorn's docs: worker_tmp_dir).
# Memory-backed where there is such a folder (Docker gives each container one).
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
keepalive = 75  # longer than NGINX's upstream keepalive_timeout, so NGINX closes first
accesslog = None
errorlog = "-"
loglevel = _config.LOG_LEVEL.lower()
proc_name = "messenger"
# Load the app in the master so a bad configuration or an unmigrated database
# stops start-up once, with one clear message, before any worker forks.
preload_app = True
# gunicorn's control socket has one default path per user, which the several
# instances a host runs would take from each other; nothing here uses it.
control_socket_disable = True
# What gunicorn refuses before the application sees it, and how: JSON, like
# every other refusal (gunicorn_refusals.py says why it is done this way).
limit_request_line = gunicorn_refusals.LIMIT_REQUEST_LINE
limit_request_fields = gunicorn_refusals.LIMIT_REQUEST_FIELDS
limit_request_field_size = gunicorn_refusals.LIMIT_REQUEST_FIELD_SIZE
gunicorn_refusals.install()
# An unread body is read to its end, up to NGINX's cap, before the connection serves again.
gunicorn_keepalive.install()


def on_starting(server):
    """Before binding the socket or forking: refuse to serve an unmigrated database."""
    startup_checks.refuse_unmigrated_database()


# --- Consul registration ----------------------------------------------------
# The app's AppConfig.ready() registers (the design card's hook), but ready()
# also runs in every management command, Celery worker and test run. gunicorn's master exists exactly
# once per serving instance: marking it here, when gunicorn reads this file and
# before it preloads the app, makes ready() register in it and nowhere else.
discovery.mark_serving_process()

# The live routes' server (messenger/live_listener.py): its socket is bound now,
# so the port is known before the preloaded app registers with Consul. when_ready
# forks it from this master once the app is loaded, so it shares Django's pages.
_live = live_listener.LiveListener(_config) if live_listener.LiveListener.wanted(_config) else None
if _live is not None:
    discovery.advertise(live_port=str(_live.port))


# When a request last reached a worker: the drain on SIGTERM lasts while requests still arrive.
# Made here, in the master, so every worker it forks writes to the same memory.
_traffic = shutdown_drain.Traffic()


def pre_request(worker, req):
    _traffic.seen(req.path)
    gunicorn_keepalive.close_after_a_body_it_cannot_drain(req)


def when_ready(server):
    # Every process forked from here (the live listener, the WSGI workers) starts with the preloaded app's
    # objects in the collector's permanent generation: a collection in a child would otherwise write to
    # each of them and copy every page that holds one (Python's docs on gc.freeze).
    gc.freeze()
    if _config.PORT_FILE:  # what the container's health check asks, where PORT=0 chose the port
        Path(_config.PORT_FILE).write_text(f"{_config.PORT}\n")
    if _live is not None:
        # The WSGI port's descriptors stay the master's: a live server holding them would keep the
        # port queueing connections after this master is gone.
        wsgi_sockets = [listener.fileno() for listener in server.LISTENERS]
        _live.start(inherited=wsgi_sockets + ([_free_port_socket.fileno()] if _free_port_socket else []))
        # NGINX sends every read to the live listener: the WSGI workers (whose /health is the Consul
        # check) start only once it answers, so no instance passes while its reads would queue unserved.
        _live.wait_serving()
        server.manage_workers = _halt_without_live(server.manage_workers, _live)
    # ready() started it in the preloaded master; start() returns that registration.
    registration = discovery.start(_config)
    if registration is None:
        return  # CONSUL_SERVICE_NAME unset: not registered anywhere
    server.log.info("Registering with Consul as %s", registration.service_id)
    # gunicorn has no hook that runs before it stops; its master dispatches each
    # signal to the arbiter's handle_<signal> method, so wrap those two.
    server.handle_term = _deregister_then(server.handle_term, server)
    server.handle_int = _deregister_then(server.handle_int, server)


def _halt_without_live(manage_workers, live: live_listener.LiveListener):
    """The master's loop calls manage_workers at least once a second. An instance whose live listener has
    exited would go on passing its check (the WSGI workers' /health) while every read NGINX sends it is
    refused: it leaves Consul and stops instead, with an error, for its platform to start it again whole
    (the swarm or Docker's restart policy, supervisord in the local runtime)."""

    def manage():
        if live.exited():
            discovery.stop()
            raise HaltServer(f"the live listener (pid {live.pid}) exited; this instance stops with it", 1)
        manage_workers()

    return manage


def _deregister_then(stop, server):
    """SIGTERM/SIGINT: leave Consul first, keep serving while the load balancer
    drops this instance, then stop the way gunicorn would have."""

    def handle():
        if discovery.stop():
            server.log.info(
                "Deregistered from Consul; serving %ss more before stopping", _config.SHUTDOWN_DRAIN_SECONDS
            )
            # The workers keep serving while the master waits here (longer while requests still arrive).
            shutdown_drain.drain(_traffic, _config.SHUTDOWN_DRAIN_SECONDS, server.log.warning)
        if _live is not None:
            _live.stop()  # its waiters are answered, not cut, while no new ones arrive
        stop()

    return handle


def on_exit(server):
    discovery.stop()  # any other way out, such as workers failing to boot
    if _live is not None:
        _live.stop()


# gunicorn's own lines in the service's log format (core/logging.py): one format per stream.
logconfig_dict = gunicorn_logging(log_format=_config.LOG_FORMAT, level=_config.LOG_LEVEL)
logger_class = "core.http.gunicorn_logger.Logger"  # no access records built for nothing
