"""The outbox model moves here from `conversations`: the state changes, the database does not.

The `outbox` table (with its index and sequence) was created by
conversations.0001_initial and keeps its name, rows and privileges; this
migration only tells Django that the model is now `outbox.OutboxEvent`
(conversations.0004 forgets it there). An existing database migrates forward
without a statement against the table; a fresh one gets the table from
conversations.0001 as before.
"""

from django.db import migrations, models


def content_type_follows(apps, schema_editor):
    """Keep the model's content type row (a database migrated before the move has one)."""
    ContentType = apps.get_model("contenttypes", "ContentType")
    ContentType.objects.using(schema_editor.connection.alias).filter(
        app_label="conversations", model="outboxevent"
    ).update(app_label="outbox")


def content_type_goes_back(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    ContentType.objects.using(schema_editor.connection.alias).filter(app_label="outbox", model="outboxevent").update(
        app_label="conversations"
    )


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        ("conversations", "0003_indexes_for_pages_and_posts"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="OutboxEvent",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("event_id", models.CharField(max_length=64, unique=True)),
                        ("event_type", models.CharField(max_length=64)),
                        ("payload", models.JSONField()),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("sent_at", models.DateTimeField(blank=True, null=True)),
                        ("attempts", models.IntegerField(default=0)),
                    ],
                    options={
                        "db_table": "outbox",
                        "indexes": [
                            models.Index(
                                condition=models.Q(("sent_at__isnull", True)), fields=["id"], name="outbox_pending_idx"
                            ),
                        ],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(content_type_follows, content_type_goes_back, elidable=True),
    ]
