"""Each stored message wakes the live waiters of its conversation, on every instance.

An AFTER INSERT trigger on `messages` sends `pg_notify('messenger_messages',
<conversation id>)`. PostgreSQL delivers a notification only when the inserting
transaction commits, and in commit order, so a waiter woken by it always finds
the message when it reads; a transaction that rolls back wakes nobody. Identical
notifications of one transaction are folded into one. Every writer of messages
(the prepared statement, the ORM path, a future bulk import) is covered without
knowing about live delivery (conversations/live/ and docs/live.md say why
LISTEN/NOTIFY rather than a RabbitMQ fan-out).

SQLite has no LISTEN: there is nothing to do there, and no live listener runs.
"""

from django.db import migrations

CHANNEL = "messenger_messages"

CREATE = f"""
CREATE FUNCTION messenger_notify_message() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', NEW.channel_id::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER messages_notify AFTER INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION messenger_notify_message();
"""

DROP = """
DROP TRIGGER IF EXISTS messages_notify ON messages;
DROP FUNCTION IF EXISTS messenger_notify_message();
"""


def _on_postgresql(sql: str):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(sql)

    return run


class Migration(migrations.Migration):
    dependencies = [("conversations", "0004_outbox_moves_to_its_app")]

    operations = [migrations.RunPython(_on_postgresql(CREATE), _on_postgresql(DROP))]
