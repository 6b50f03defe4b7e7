"""OutboxEvent is now `outbox.OutboxEvent` (outbox.0001_initial): forget it here, leave the table alone."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("conversations", "0003_indexes_for_pages_and_posts"),
        ("outbox", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="OutboxEvent")],
            database_operations=[],
        ),
    ]
