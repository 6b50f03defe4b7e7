from django.apps import AppConfig


class ConversationsConfig(AppConfig):
    """The chat: users, two-person conversations, messages, and the API over them."""

    name = "conversations"
    verbose_name = "Conversations"

    def ready(self):
        # Declares the new_message event's body to the outbox, in every process that relays.
        from conversations import events  # noqa: F401
