"""The outbox model's move from `conversations` to `outbox` changes Django's state, never the table."""

from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test.utils import CaptureQueriesContext

from outbox.models import OutboxEvent

BEFORE_THE_MOVE = [("conversations", "0003_indexes_for_pages_and_posts"), ("outbox", None)]
PAYLOAD = {"type": "new_message", "channel_id": 7, "user_id": 1, "index": 3, "participant_ids": [1, 2]}


@pytest.mark.django_db(transaction=True)
def test_a_database_migrated_before_the_move_migrates_forward_keeping_its_pending_events():
    """A database at the old state (the model in `conversations`) migrates forward without touching `outbox`."""
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE_THE_MOVE)
    old_model = executor.loader.project_state(BEFORE_THE_MOVE[:1]).apps.get_model("conversations", "OutboxEvent")
    old_model.objects.create(event_id="7:3", event_type="new_message", payload=PAYLOAD)

    executor = MigrationExecutor(connection)
    with CaptureQueriesContext(connection) as queries:
        executor.migrate(executor.loader.graph.leaf_nodes())

    assert [q["sql"] for q in queries if '"outbox"' in q["sql"]] == []
    event = OutboxEvent.objects.get()
    assert (event.event_id, event.payload, event.sent_at) == ("7:3", PAYLOAD, None)
    assert not MigrationExecutor(connection).migration_plan(executor.loader.graph.leaf_nodes())


@pytest.mark.parametrize(
    "app, migration", [("outbox", "0001_initial"), ("conversations", "0004_outbox_moves_to_its_app")]
)
@pytest.mark.django_db
def test_the_move_is_no_sql_statement(app, migration):
    """`sqlmigrate` of either half of the move prints comments only."""
    out = StringIO()
    call_command("sqlmigrate", app, migration, stdout=out)
    statements = [line for line in out.getvalue().splitlines() if line.strip() and not line.startswith("--")]
    assert statements in ([], ["BEGIN;", "COMMIT;"])
