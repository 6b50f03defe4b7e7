"""The Celery app, the cookiecutter way: configured from Django settings (`CELERY_*`).

Its one job is relaying the transactional outbox to RabbitMQ (see
`outbox.tasks` and `conversations.events`). Run it with
`celery -A messenger worker --beat`; the broker is the RabbitMQ named by
`AMQPHOST` and friends. Celery's own task queue is `messenger.tasks`, never
`chat_queue`: that queue belongs to the notifier, and nothing here consumes it.
"""

import gc
import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "messenger.settings")

app = Celery("messenger")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.worker_before_create_process.connect
def _share_the_loaded_app_with_children(**_: object) -> None:
    """The pool's child and the embedded beat are forked from this process once the app is loaded: with
    its objects in the collector's permanent generation, a collection in a child does not write to each
    of them and so copy every page that holds one (as gunicorn_conf.when_ready does for the instances)."""
    gc.freeze()
