"""The Celery app, the cookiecutter way: configured from Django settings (`CELERY_*`).

Its one job is relaying the transactional outbox to RabbitMQ (see
`outbox.tasks` and `conversations.events`). Run it with
`celery -A messenger worker --beat`; the broker is the RabbitMQ named by
`AMQPHOST` and friends. Celery's own task queue is `messenger.tasks`, never
`chat_queue`: that queue belongs to the notifier, and nothing here consumes it.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "messenger.settings")

app = Celery("messenger")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
