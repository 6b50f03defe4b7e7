"""gunicorn settings, read from the configuration schema.

Start a serving instance with:
    gunicorn -c messenger/gunicorn_conf.py messenger.wsgi
"""

from messenger import config as config_schema
from messenger import startup_checks

_config = config_schema.load()

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
