from django.apps import AppConfig


class OutboxConfig(AppConfig):
    """The transactional outbox: events stored in their cause's transaction, relayed to RabbitMQ by Celery."""

    name = "outbox"
    verbose_name = "Outbox"
