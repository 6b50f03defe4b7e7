"""Report the event outbox, and optionally relay it now."""

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError
from django.utils import timezone

from outbox import relay
from outbox.kicker import broker_configured
from outbox.services import pending_backlog


class Command(BaseCommand):
    help = (
        "Print how many events wait in the outbox and how old the oldest is; "
        "--relay publishes them to chat_queue first."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--relay",
            action="store_true",
            help="Publish every pending event now, as the worker would (needs AMQPHOST).",
        )
        parser.add_argument(
            "--max-age",
            type=float,
            metavar="SECONDS",
            help="Exit with an error if the oldest pending event is older than this (for monitoring).",
        )

    def handle(self, *args, max_age=None, **options):
        if options["relay"]:
            if not broker_configured():
                raise CommandError("No broker configured: set AMQPHOST (and AMQPPORT, AMQPUSER, ...) to relay.")
            try:
                sent = relay.relay_pending()
            except (*relay.CONNECTION_ERRORS, DatabaseError, relay.RelayError) as exc:
                raise CommandError(f"Relay failed, pending events stay in the outbox: {exc}") from exc
            self.stdout.write(f"relayed: {sent}")

        count, oldest = pending_backlog()
        self.stdout.write(f"pending: {count}")
        if oldest is None:
            self.stdout.write("oldest pending: none")
            return
        age = (timezone.now() - oldest.created_at).total_seconds()
        self.stdout.write(f"oldest pending: {age:.1f}s (event {oldest.event_id}, attempts {oldest.attempts})")
        if max_age is not None and age > max_age:
            raise CommandError(f"The oldest pending event is {age:.1f}s old, over --max-age {max_age:g}s.")
