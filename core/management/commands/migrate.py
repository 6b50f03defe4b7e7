"""Django's `migrate`, made safe to run from two migrators at once and leaving the app role able to work.

This overrides `django.core.management.commands.migrate` (an app's command takes
precedence over Django's own), so every way of migrating goes through it: the
migrator job, `make run`, and the test runner creating its database.
"""

from django.conf import settings
from django.core.management.commands.migrate import Command as DjangoMigrateCommand
from django.db import connections

from core.db.job_lock import add_lock_arguments, job_lock
from core.db.privileges import grant_application_role


class Command(DjangoMigrateCommand):
    help = (
        DjangoMigrateCommand.help
        + " Holds the database's schema-jobs lock while it works (a second migrator waits, see --lock-timeout),"
        " then gives DB_APPLICATION_USER, if set, row access to every table, now and for tables created later."
    )

    def add_arguments(self, parser):
        super().add_arguments(parser)
        add_lock_arguments(parser)

    def handle(self, *args, **options):
        if options["plan"] or options["check_unapplied"]:
            return super().handle(*args, **options)  # read-only: nothing to serialise or grant
        database = options["database"]
        with job_lock("migrate", timeout=options["lock_timeout"], using=database, progress=self.stderr.write):
            super().handle(*args, **options)
            report = grant_application_role(connections[database], settings.CONFIG.DB_APPLICATION_USER)
            if report and options["verbosity"] >= 1:
                self.stdout.write(str(report))
