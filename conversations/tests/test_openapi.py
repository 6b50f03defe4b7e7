"""The OpenAPI description at /schema: served, valid, readable offline, and true to real responses.

Every (operation, status) pair the description documents is produced here by a
real request and its response checked against the description, except 503,
which needs a lost database (tests/test_database_outage.py checks those), and
414, which gunicorn answers before Django (tests/test_fuzz.py checks it live).
"""

import json
import re

import pytest
from django.test import override_settings
from openapi_spec_validator import validate

from conversations.models import Message
from tests.support.openapi_check import ResponseChecker, served_schema

MESSAGES = "/conversations/{conversation_id}/messages"
HORIZON = "/conversations/{conversation_id}/view_horizon"
# Served by the live listener only: conversations/tests/test_live.py checks its answers against the description.
STREAM = "/conversations/{conversation_id}/stream"


@pytest.fixture(scope="module")
def checker():
    return ResponseChecker(served_schema())


def test_schema_is_valid_openapi_3_and_names_every_route(checker):
    validate(checker.schema)
    assert checker.schema["openapi"].startswith("3.")
    assert set(checker.schema["paths"]) == {
        "/health",
        "/users",
        "/conversations",
        MESSAGES,
        HORIZON,
        STREAM,
    }


def test_schema_is_served_as_yaml_by_default(client):
    response = client.get("/schema")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi")
    assert response.content.startswith(b"openapi: 3.")


def test_schema_documents_the_headers_and_error_shape(checker):
    schema = checker.schema
    post = schema["paths"][MESSAGES]["post"]
    headers = {p["name"]: p for p in post["parameters"] if p["in"] == "header"}
    assert headers["User-Id"]["required"] is True
    assert headers["Idempotency-Key"]["schema"] == {
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
        "pattern": "^[!-~]+$",
    }
    assert set(post["responses"]) == {"201", "400", "404", "413", "414", "415", "422", "503"}
    assert schema["components"]["schemas"]["Error"] == {
        "type": "object",
        "properties": {"error": {"type": "string", "description": "What went wrong, in a sentence."}},
        "required": ["error"],
        "additionalProperties": False,
    }
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            for code, response in operation["responses"].items():
                if code != "414":  # 414 is answered by gunicorn, before the application
                    assert "X-Request-Id" in response["headers"], (path, code)
                if code.startswith(("4", "5")) and path != "/health":
                    assert response["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/Error"
                    }, (path, code)


def test_schema_page_loads_every_asset_from_this_instance(client):
    """The human page (Swagger UI) works with no internet: every script and stylesheet is served locally."""
    response = client.get("/schema/docs")
    assert response.status_code == 200
    html = response.content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets, html[:500]
    for asset in assets:
        assert asset.startswith("/"), f"{asset} is not served by this instance"
        if asset.startswith("/static/"):
            assert client.get(asset).status_code == 200, asset
    assert '"/schema"' in html or "'/schema'" in html  # the page reads this instance's description


# --- real responses against the description ---------------------------------------


def _post(api, path, body, user=None, **headers):
    if user is not None:
        headers["HTTP_USER_ID"] = str(user.pk)
    return api.post(path, body, format="json", **headers)


def _messages(conversation):
    return f"/conversations/{conversation.pk}/messages"


def _horizon(conversation):
    return f"/conversations/{conversation.pk}/view_horizon"


# (method, path template, status) -> a request that produces it.
SCENARIOS = {
    ("GET", "/health", "200"): lambda api, u, c: api.get("/health"),
    ("GET", "/users", "200"): lambda api, u, c: api.get("/users", {"limit": 1}),
    ("GET", "/users", "400"): lambda api, u, c: api.get("/users", {"limit": 0}),
    ("POST", "/users", "201"): lambda api, u, c: _post(api, "/users", {"name": "Zed"}),
    ("POST", "/users", "400"): lambda api, u, c: _post(api, "/users", {"name": "  "}),
    ("POST", "/users", "413"): lambda api, u, c: _post(api, "/users", {"name": "x" * 300}),
    ("POST", "/users", "415"): lambda api, u, c: api.post("/users", "name=x", content_type="text/plain"),
    ("GET", "/conversations", "200"): lambda api, u, c: api.get("/conversations", HTTP_USER_ID=str(u[0].pk)),
    ("GET", "/conversations", "400"): lambda api, u, c: api.get("/conversations"),
    ("POST", "/conversations", "201"): lambda api, u, c: _post(
        api, "/conversations", {"participant_ids": [u[0].pk, u[2].pk]}
    ),
    ("POST", "/conversations", "400"): lambda api, u, c: _post(
        api, "/conversations", {"participant_ids": [u[0].pk, u[1].pk]}
    ),
    ("POST", "/conversations", "413"): lambda api, u, c: _post(
        api, "/conversations", {"participant_ids": list(range(100))}
    ),
    ("POST", "/conversations", "415"): lambda api, u, c: api.post("/conversations", "x", content_type="text/plain"),
    ("GET", MESSAGES, "200"): lambda api, u, c: api.get(_messages(c), {"limit": 1}),
    ("GET", MESSAGES, "400"): lambda api, u, c: api.get(_messages(c), {"wait": "31"}),
    ("GET", MESSAGES, "404"): lambda api, u, c: api.get("/conversations/999999999/messages"),
    ("POST", MESSAGES, "201"): lambda api, u, c: _post(
        api, _messages(c), {"content": "hi"}, u[0], HTTP_IDEMPOTENCY_KEY="k-1"
    ),
    ("POST", MESSAGES, "400"): lambda api, u, c: _post(api, _messages(c), {"content": "hi"}, u[2]),
    ("POST", MESSAGES, "404"): lambda api, u, c: _post(
        api, "/conversations/999999999/messages", {"content": "hi"}, u[0]
    ),
    ("POST", MESSAGES, "413"): lambda api, u, c: _post(api, _messages(c), {"content": "x" * 300}, u[0]),
    ("POST", MESSAGES, "415"): lambda api, u, c: api.post(
        _messages(c), "hi", content_type="text/plain", HTTP_USER_ID=str(u[0].pk)
    ),
    ("POST", MESSAGES, "422"): lambda api, u, c: (
        _post(api, _messages(c), {"content": "first"}, u[0], HTTP_IDEMPOTENCY_KEY="k-2"),
        _post(api, _messages(c), {"content": "second"}, u[0], HTTP_IDEMPOTENCY_KEY="k-2"),
    )[1],
    ("POST", HORIZON, "204"): lambda api, u, c: _post(api, _horizon(c), {"index": 0}, u[0]),
    ("POST", HORIZON, "400"): lambda api, u, c: _post(api, _horizon(c), {"index": -1}, u[0]),
    ("POST", HORIZON, "404"): lambda api, u, c: _post(api, "/conversations/999999999/view_horizon", {"index": 1}, u[0]),
    ("POST", HORIZON, "413"): lambda api, u, c: _post(api, _horizon(c), {"index": 1, "pad": "x" * 300}, u[0]),
    ("POST", HORIZON, "415"): lambda api, u, c: api.post(
        _horizon(c), "1", content_type="text/plain", HTTP_USER_ID=str(u[0].pk)
    ),
}


def test_every_documented_status_but_503_and_414_has_a_scenario(checker):
    documented = {key for key in checker.documented() if key[2] not in ("503", "414") and key[1] != STREAM}
    assert documented == set(SCENARIOS)


@pytest.mark.django_db
@override_settings(JSON_BODY_LIMIT=256)
@pytest.mark.parametrize("key", sorted(SCENARIOS), ids=lambda key: " ".join(key))
def test_real_response_matches_the_description(checker, api, users, conversation, key):
    response = SCENARIOS[key](api, users, conversation)
    assert str(response.status_code) == key[2], response.content
    checker.check(response)


@pytest.mark.django_db
@override_settings(READS_REQUIRE_MEMBER=True)
@pytest.mark.parametrize(
    "header, error",
    [
        (None, "Please specify a user id by adding the User-Id header."),
        ("outsider", "User with id {} is not in conversation"),
    ],
)
def test_members_only_refusals_match_the_description(checker, api, users, conversation, header, error):
    headers = {"HTTP_USER_ID": str(users[2].pk)} if header else {}
    response = api.get(_messages(conversation), **headers)
    assert response.status_code == 400
    assert response.json() == {"error": error.format(users[2].pk)}
    checker.check(response)


@pytest.mark.django_db
def test_idempotent_replay_matches_the_description(checker, api, users, conversation):
    first = _post(api, _messages(conversation), {"content": "once"}, users[0], HTTP_IDEMPOTENCY_KEY="same")
    again = _post(api, _messages(conversation), {"content": "once"}, users[0], HTTP_IDEMPOTENCY_KEY="same")
    assert (first.status_code, again.status_code) == (201, 201)
    assert again["Idempotent-Replayed"] == "true"
    assert json.loads(again.content) == json.loads(first.content)
    assert Message.objects.count() == 1
    checker.check(again)
