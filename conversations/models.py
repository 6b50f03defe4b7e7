"""The chat data model, on the reference service's table names.

Tables keep the reference's names (`users`, `channels`, `users_channels`,
`messages`) so its SQL, tooling and habits carry over; the constraints the
reference lacked are added here, enforced by the database.
"""

from django.db import models
from django.db.models import F, Q


class User(models.Model):
    name = models.TextField()
    inserted_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "users"

    def __str__(self) -> str:
        return f"{self.name} ({self.pk})"


class Conversation(models.Model):
    """A two-person conversation (a "channel" in the reference's schema).

    `user_low`/`user_high` hold the pair ordered by id, so "at most one
    conversation per pair" is a unique constraint, not a racy check.
    `last_index` is the per-conversation message counter: a message post
    increments it in the same transaction that inserts the message, so indexes
    are gap-free and never duplicated, whatever the concurrency.
    """

    # Indexed with the id (Meta.indexes), not alone: a user's conversations are read by id.
    user_low = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+", db_index=False)
    user_high = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+", db_index=False)
    last_index = models.BigIntegerField(default=0)
    inserted_at = models.DateTimeField(auto_now_add=True)
    participants = models.ManyToManyField(User, through="Participant", related_name="conversations")

    class Meta:
        db_table = "channels"
        constraints = [
            models.UniqueConstraint(fields=["user_low", "user_high"], name="channels_one_per_pair"),
            models.CheckConstraint(condition=Q(user_low__lt=F("user_high")), name="channels_pair_ordered"),
        ]
        # A page of a user's conversations in id order is one ordered range scan per
        # side of the pair (selectors.conversations_page_read), however many they have.
        indexes = [
            models.Index(fields=["user_low", "id"], name="channels_user_low_id_idx"),
            models.Index(fields=["user_high", "id"], name="channels_user_high_id_idx"),
        ]

    def __str__(self) -> str:
        return f"conversation {self.pk} ({self.user_low_id}, {self.user_high_id})"


class Participant(models.Model):
    """A user's membership of a conversation, with their view horizon."""

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, db_column="channel_id")
    user = models.ForeignKey(User, on_delete=models.CASCADE)
    last_viewed_index = models.BigIntegerField(default=0)
    inserted_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "users_channels"
        constraints = [
            models.UniqueConstraint(fields=["conversation", "user"], name="users_channels_user_channel_unique"),
        ]
        indexes = [models.Index(fields=["user", "conversation"], name="users_channels_user_idx")]

    def __str__(self) -> str:
        return f"user {self.user_id} in conversation {self.conversation_id}"


class Message(models.Model):
    content = models.TextField()
    user = models.ForeignKey(User, on_delete=models.CASCADE)
    # No index of its own: the unique (channel_id, index) below serves it, and each
    # message post then writes one index fewer.
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, db_column="channel_id", db_index=False)
    index = models.BigIntegerField()
    inserted_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "messages"
        constraints = [
            # Also the index that serves a page of a conversation in index order.
            models.UniqueConstraint(fields=["conversation", "index"], name="messages_channel_index_unique"),
        ]

    def __str__(self) -> str:
        return f"message {self.conversation_id}:{self.index}"


class IdempotencyKey(models.Model):
    """A client's `Idempotency-Key` for a message post, and the message it produced.

    Written in the same transaction as the message, so a key exists if and only
    if its message committed; the unique (user, key) constraint decides between
    two concurrent posts with the same key. `fingerprint` is a hash of what was
    posted (conversation and content): a repeat that differs is refused.
    """

    user = models.ForeignKey(User, on_delete=models.CASCADE)
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64)
    message = models.ForeignKey(Message, on_delete=models.CASCADE)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "idempotency_keys"
        constraints = [
            models.UniqueConstraint(fields=["user", "key"], name="idempotency_keys_user_key_unique"),
        ]
        indexes = [models.Index(fields=["created_at"], name="idempotency_keys_created_idx")]

    def __str__(self) -> str:
        return f"Idempotency-Key of user {self.user_id} for message {self.message_id}"
