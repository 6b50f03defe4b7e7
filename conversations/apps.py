from django.apps import AppConfig


class ConversationsConfig(AppConfig):
    """The chat API."""

    name = "conversations"
    verbose_name = "Conversations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        """Register this serving instance in Consul (the design card's hook).

        ready() also runs in every management command, Celery worker and test
        run, and in each gunicorn worker when the app is not preloaded, so
        `start_if_serving` acts only in the process the serving entry point
        marked (gunicorn's master, see messenger/gunicorn_conf.py): exactly one
        registration per instance. It touches no database, and calling it twice
        changes nothing.
        """
        from django.conf import settings

        from discovery import registration as discovery

        discovery.start_if_serving(settings.CONFIG)
