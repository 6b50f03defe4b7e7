"""Check real responses against the service's own OpenAPI description.

openapi-core does the validation (status documented, body and headers match the
response's schema). Responses come either from Django's test client or from a
live server over HTTP; both are checked the same way.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from openapi_core import OpenAPI
from openapi_core.contrib.django import DjangoOpenAPIRequest, DjangoOpenAPIResponse
from openapi_core.testing import MockRequest, MockResponse
from rest_framework.test import APIClient


def served_schema() -> dict:
    """The description as `/schema?format=json` serves it (no database needed)."""
    response = APIClient().get("/schema", {"format": "json"})
    assert response.status_code == 200, response.content[:500]
    return json.loads(response.content)


class ResponseChecker:
    """`check(response)` raises openapi-core's error when a response breaks the description."""

    def __init__(self, schema: dict):
        self.schema = schema
        self.openapi = OpenAPI.from_dict(schema)

    def check(self, response) -> None:
        """A response of Django's test client."""
        self.openapi.validate_response(DjangoOpenAPIRequest(response.wsgi_request), DjangoOpenAPIResponse(response))

    def check_live(
        self, method: str, url: str, path_pattern: str, status: int, body: bytes, headers: dict[str, str]
    ) -> None:
        """A response read from a live server over HTTP."""
        parts = urlsplit(url)
        request = MockRequest(f"{parts.scheme}://{parts.netloc}", method, parts.path, path_pattern=path_pattern)
        content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
        self.openapi.validate_response(request, MockResponse(body, status, headers, content_type.split(";")[0]))

    def documented(self) -> set[tuple[str, str, str]]:
        """Every (method, path, status) the description names."""
        return {
            (method.upper(), path, code)
            for path, operations in self.schema["paths"].items()
            for method, operation in operations.items()
            for code in operation["responses"]
        }
