from django.urls import path

from conversations.api import views

urlpatterns = [
    path("health", views.health, name="health"),
    path("users", views.UsersView.as_view(), name="users"),
    path("conversations", views.ConversationsView.as_view(), name="conversations"),
    path("conversations/<str:conversation_id>/messages", views.MessagesView.as_view(), name="messages"),
    path("conversations/<str:conversation_id>/view_horizon", views.ViewHorizonView.as_view(), name="view-horizon"),
]
