from django.apps import AppConfig


class CoreConfig(AppConfig):
    """Plumbing with no chat in it: HTTP, the database, logging, and the schema jobs' commands."""

    name = "core"
    verbose_name = "Core"
