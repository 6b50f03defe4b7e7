"""The outbox table: one row per event, written in the same transaction as its cause."""

from django.db import models
from django.db.models import Q


class OutboxEvent(models.Model):
    """An event waiting to be published, written in the same transaction as its cause.

    An event exists if and only if its cause committed. The relay marks a row
    `sent_at` only after the broker has confirmed it.
    """

    event_id = models.CharField(max_length=64, unique=True)
    event_type = models.CharField(max_length=64)
    payload = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    attempts = models.IntegerField(default=0)

    class Meta:
        db_table = "outbox"
        indexes = [
            models.Index(fields=["id"], name="outbox_pending_idx", condition=Q(sent_at__isnull=True)),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id}"
