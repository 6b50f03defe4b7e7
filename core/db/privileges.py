"""The application role's privileges: rows in every table, and nothing that changes the schema.

`manage.py migrate`, run as the migrator (the owner of the database and its public
schema), calls `grant_application_role` after migrating. It sets default privileges,
so every table and sequence the migrator creates from then on (by any later
migration, or by hand) is usable by the application role the moment it exists,
and grants on whatever already exists, as a safety net for objects made before.
Re-running it changes nothing. Each statement is idempotent in PostgreSQL.

Roles themselves are cluster-wide and made by `infrastructure/sql/roles.sql`;
privileges are per database, which is why they are given here rather than there.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.core.management.base import CommandError
from psycopg import sql

TABLE_PRIVILEGES = sql.SQL("SELECT, INSERT, UPDATE, DELETE")
SEQUENCE_PRIVILEGES = sql.SQL("USAGE, SELECT, UPDATE")

STATEMENTS = (
    # Temporary tables would be schema changes of a kind; the application needs none.
    "REVOKE TEMPORARY ON DATABASE {database} FROM PUBLIC",
    "GRANT CONNECT ON DATABASE {database} TO {role}",
    # PostgreSQL 15 no longer lets PUBLIC create in `public`; older clusters and
    # upgraded ones still do, so say it explicitly.
    "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
    "GRANT USAGE ON SCHEMA public TO {role}",
    "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT {table_privileges} ON TABLES TO {role}",
    "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT {sequence_privileges} ON SEQUENCES TO {role}",
    "GRANT {table_privileges} ON ALL TABLES IN SCHEMA public TO {role}",
    "GRANT {sequence_privileges} ON ALL SEQUENCES IN SCHEMA public TO {role}",
)


@dataclass(frozen=True)
class GrantReport:
    role: str
    database: str
    tables: int
    sequences: int

    def __str__(self) -> str:
        return (
            f"Application role {self.role!r} may read and write rows in {self.tables} tables "
            f"({self.sequences} sequences) of database {self.database!r}, and tables created later."
        )


def grant_application_role(connection, role: str | None) -> GrantReport | None:
    """Give `role` row access in the connected database; None when there is nothing to do."""
    if connection.vendor != "postgresql" or not role:
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_user, current_database(), EXISTS (SELECT FROM pg_roles WHERE rolname = %s)", [role]
        )
        migrator, database, exists = cursor.fetchone()
        if role == migrator:
            return None  # one role for everything (development): nothing to separate
        if not exists:
            raise CommandError(
                f"The application role {role!r} (DB_APPLICATION_USER) does not exist in this cluster: create it "
                "with infrastructure/messenger-db-deploy.sh (infrastructure/sql/roles.sql) before migrating."
            )
        names = {
            "database": sql.Identifier(database),
            "role": sql.Identifier(role),
            "table_privileges": TABLE_PRIVILEGES,
            "sequence_privileges": SEQUENCE_PRIVILEGES,
        }
        for statement in STATEMENTS:
            cursor.execute(sql.SQL(statement).format(**names).as_string(cursor.connection))
        cursor.execute(
            "SELECT count(*) FILTER (WHERE c.relkind IN ('r', 'p')), count(*) FILTER (WHERE c.relkind = 'S') "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'"
        )
        tables, sequences = cursor.fetchone()
    return GrantReport(role, database, tables, sequences)
