"""Forget Idempotency-Keys older than IDEMPOTENCY_KEY_TTL."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from conversations import services


class Command(BaseCommand):
    help = (
        "Delete the Idempotency-Keys of message posts older than IDEMPOTENCY_KEY_TTL; safe to run at any "
        "time and as often as you like (from cron, say). Expired keys are ignored by the API either way."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="Only count the expired keys; delete nothing.")

    def handle(self, *args, **options):
        try:
            if options["dry_run"]:
                count = services.idempotency_keys_expired().count()
                self.stdout.write(f"{count} expired Idempotency-Key(s) would be deleted.")
                return
            deleted = services.idempotency_keys_purge()
        except DatabaseError as exc:
            raise CommandError(f"Could not purge Idempotency-Keys: {exc}") from exc
        self.stdout.write(
            self.style.SUCCESS(f"Deleted {deleted} Idempotency-Key(s) older than {settings.IDEMPOTENCY_KEY_TTL:g}s.")
        )
