"""What a serving instance checks before it listens: a reachable database with every migration applied.

Called once per serving instance from gunicorn's `on_starting` hook (the master,
after the preloaded app has set Django up, before the socket is bound or a worker
forks). Not from `AppConfig.ready()`: that also runs in management commands (the
migrator's own `migrate` among them), Celery workers and tests.

An instance that started anyway would answer every request with an error about a
missing table; refusing to start instead says what to do, once, in the deploy's
output, and the instance never registers with Consul or joins the load balancer.
The migrator instance turns the check off (REQUIRE_MIGRATED_DB=false): it is the
one that applies the migrations.
"""

from __future__ import annotations

RUN_THE_MIGRATOR = (
    "run the migrator job: infrastructure/messenger-db-migrator-deploy.sh, then create_db, migrate and seed "
    "in the messenger-migrator instance (docs/migrations.md)"
)


class StartupRefused(RuntimeError):
    """The instance must not serve; the message says why and what to do.

    A RuntimeError, because gunicorn prints those as `Error: <message>` and exits 1.
    """


def pending_migrations(using: str = "default") -> list[str]:
    """The migrations (`<app_label>.<name>`) not yet applied to the database, in the order they would run."""
    from django.db import connections
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connections[using])
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    return [f"{migration.app_label}.{migration.name}" for migration, _backwards in plan]


def refuse_unmigrated_database(using: str = "default") -> None:
    """Raise StartupRefused unless the database is reachable and fully migrated."""
    # gunicorn_conf.py preloads the app (preload_app = True, not a setting), so
    # Django is set up in the master before on_starting runs.
    from django.conf import settings
    from django.db import DatabaseError, connections

    if not settings.CONFIG.REQUIRE_MIGRATED_DB:
        return
    connection = connections[using]
    name = connection.settings_dict["NAME"]
    if connection.vendor == "postgresql":
        where = (
            f"database {name!r} at {connection.settings_dict['HOST']}:{connection.settings_dict['PORT']} "
            f"as {connection.settings_dict['USER']!r}"
        )
    else:
        where = f"database {str(name)!r}"
    try:
        pending = pending_migrations(using)
    except DatabaseError as exc:
        reason = str(exc).strip()
        # No SQLSTATE comes with a refused connection; the server's text is what tells.
        if f'database "{name}" does not exist' in reason:
            raise StartupRefused(f"{where} does not exist: {RUN_THE_MIGRATOR}") from None
        raise StartupRefused(f"cannot check the migrations of {where}: {reason}") from None
    finally:
        # Never hand an open connection to the workers gunicorn is about to fork.
        connections.close_all()
    if pending:
        shown = ", ".join(pending[:5]) + (f" and {len(pending) - 5} more" if len(pending) > 5 else "")
        raise StartupRefused(f"{where} has unapplied migrations ({shown}): {RUN_THE_MIGRATOR}")
