"""URL routes: the contract's paths, without trailing slashes."""

from django.urls import include, path, re_path

from conversations import errors

urlpatterns = [
    path("", include("conversations.urls")),
    # Anything else is a JSON 404 (also with DEBUG on, where handler404 is bypassed).
    re_path(r"^(?!static/).*$", errors.handler404),
]

handler400 = "conversations.errors.handler400"
handler404 = "conversations.errors.handler404"
handler500 = "conversations.errors.handler500"
