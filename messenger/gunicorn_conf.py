"""gunicorn settings, read from the configuration schema.

Start a serving instance with:
    gunicorn -c messenger/gunicorn_conf.py messenger.wsgi
"""

from messenger import config as config_schema
from messenger import startup_checks

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
        atexit.register(lambda: os.getpid() == master and shutil.rmtree(directory, ignore_errors=True))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    return directory


_share_metrics_between_workers()

bind = f"{_config.BIND_HOST}:{_config.PORT}"
workers = _config.WEB_CONCURRENCY
threads = _config.WEB_THREADS
worker_class = "gthread" if _config.WEB_THREADS > 1 else "sync"
graceful_timeout = int(_config.GRACEFUL_TIMEOUT)
timeout = 30
keepalive = 75  # longer than NGINX's upstream keepalive_timeout, so NGINX closes first
accesslog = None
errorlog = "-"
loglevel = _config.LOG_LEVEL.lower()
proc_name = "messenger"
# Load the app in the master so a bad configuration or an unmigrated database
# stops start-up once, with one clear message, before any worker forks.
preload_app = True


def on_starting(server):
    """Before binding the socket or forking: refuse to serve an unmigrated database."""
    startup_checks.refuse_unmigrated_database()
