"""URL routes: the contract's paths, without trailing slashes."""

from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from core.http import errors, metrics

urlpatterns = [
    path("", include("conversations.api.urls")),
    # The OpenAPI description (YAML; JSON with ?format=json) and Swagger UI over it,
    # whose assets are served from this instance (no CDN; Redoc is left out as its
    # page loads web fonts from the internet).
    path("schema", SpectacularAPIView.as_view(), name="schema"),
    path("schema/docs", SpectacularSwaggerView.as_view(url_name="schema"), name="schema-docs"),
    # Prometheus; kept off the public load balancer (and optionally token-protected).
    path("metrics", metrics.metrics, name="metrics"),
    # Anything else is a JSON 404 (also with DEBUG on, where handler404 is bypassed).
    re_path(r"^(?!static/).*$", errors.handler404),
]

handler400 = "core.http.errors.handler400"
handler404 = "core.http.errors.handler404"
handler500 = "core.http.errors.handler500"
