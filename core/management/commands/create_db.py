"""Create the service's database through the maintenance database."""

import psycopg
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from psycopg import sql


class Command(BaseCommand):
    help = (
        "Create the PostgreSQL database named by CREATE_DB_NAME (or --name), connecting to PGDATABASE "
        "(normally the maintenance database, postgres). An existing database is left alone unless "
        "--drop-existing is given."
    )

    def add_arguments(self, parser):
        parser.add_argument("--name", help="Database to create (default: CREATE_DB_NAME).")
        parser.add_argument("--drop-existing", action="store_true", help="Drop the database first if it exists.")
        parser.add_argument("--owner", help="Role that will own the new database (default: the connecting role).")

    def handle(self, *args, **options):
        config = settings.CONFIG
        name = options["name"] or config.CREATE_DB_NAME
        if not name:
            raise CommandError("Set CREATE_DB_NAME (or pass --name) to the database to create.")
        if not config.PGHOST:
            raise CommandError("create_db needs PGHOST: make run creates the embedded PostgreSQL's database itself.")
        params = {
            "host": config.PGHOST,
            "port": config.PGPORT,
            "user": config.PGUSER,
            "password": config.PGPASSWORD or None,
            "dbname": config.PGDATABASE,
            "autocommit": True,
            "connect_timeout": 10,
        }
        try:
            with psycopg.connect(**params) as conn:
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
                if exists and not options["drop_existing"]:
                    self.stdout.write(
                        f"Database {name!r} already exists; left as it is (use --drop-existing to recreate it)."
                    )
                    return
                if exists:
                    self.stdout.write(f"Dropping database {name!r} ...")
                    conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
                statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
                if options["owner"]:
                    statement = sql.SQL("{} OWNER {}").format(statement, sql.Identifier(options["owner"]))
                conn.execute(statement)
        except psycopg.Error as exc:
            raise CommandError(f"Could not create database {name!r}: {exc}".strip()) from exc
        self.stdout.write(self.style.SUCCESS(f"Created database {name!r}."))
