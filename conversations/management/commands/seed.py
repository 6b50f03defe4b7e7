"""Write the tutorial's seed users. Idempotent."""

from django.core.management.base import BaseCommand
from django.db import connection, transaction

from conversations.models import User
from core.db.job_lock import add_lock_arguments, job_lock

SEED_USERS = (
    (1, "James Blanderphone"),
    (2, "Normalavian Ropetoter"),
    (3, "Flambaravo Chortleblatt"),
)


class Command(BaseCommand):
    help = "Create the three seed users (ids 1, 2, 3 on a fresh database); running it again changes nothing."

    def add_arguments(self, parser):
        add_lock_arguments(parser)

    def handle(self, *args, **options):
        # The schema-jobs lock: a seed never interleaves with a migration or another seed.
        with job_lock("seed", timeout=options["lock_timeout"], progress=self.stderr.write):
            self._seed()

    def _seed(self):
        created = 0
        with transaction.atomic():
            for user_id, name in SEED_USERS:
                if User.objects.filter(name=name).exists():
                    continue
                kwargs = {"name": name}
                if not User.objects.filter(pk=user_id).exists():
                    kwargs["pk"] = user_id
                User.objects.create(**kwargs)
                created += 1
            if created and connection.vendor == "postgresql":
                # Rows written with explicit ids leave the sequence behind them.
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT setval(pg_get_serial_sequence('users', 'id'), GREATEST((SELECT MAX(id) FROM users), 1))"
                    )
        total = User.objects.count()
        self.stdout.write(
            self.style.SUCCESS(
                f"Seed users: {created} created, {len(SEED_USERS) - created} already present ({total} users in all)."
            )
        )
