from django.apps import AppConfig


class ConversationsConfig(AppConfig):
    """The chat API.

    It has no ready(): the design card registers with Consul there, but ready()
    also runs in every management command, Celery worker and test run. Each
    serving instance registers exactly once from gunicorn's master instead
    (messenger/gunicorn_conf.py, messenger/discovery.py).
    """

    name = "conversations"
    verbose_name = "Conversations"
    default_auto_field = "django.db.models.BigAutoField"
