from django.apps import AppConfig


class DiscoveryConfig(AppConfig):
    """Consul registration of a serving instance (discovery/registration.py)."""

    name = "discovery"
    verbose_name = "Service discovery"

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

        from discovery import registration

        registration.start_if_serving(settings.CONFIG)
