# Load the Celery app with Django, so `@shared_task` binds to it (the cookiecutter way).
from messenger.celery import app as celery_app

__all__ = ("celery_app",)
