"""What fuzzing found once, kept as regular tests.

Some by schemathesis (tests/test_fuzz.py, the seed named in the test), some by
hand, probing the inputs JSON Schema cannot describe.
"""

import pytest

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("method", ["post", "put", "delete", "patch", "trace"])
def test_health_refuses_methods_other_than_get_and_head_with_a_json_405(client, method):
    """Found with seed 1: `TRACE /health` answered 200 `OK`, a method the description does not list."""
    response = getattr(client, method)("/health")
    assert response.status_code == 405
    assert response.json() == {"error": f'Method "{method.upper()}" not allowed.'}
    assert response["Allow"] == "GET, HEAD"


def test_health_still_answers_head(client):
    response = client.head("/health")
    assert response.status_code == 200


@pytest.mark.parametrize("query", ["limit=", "after_index=", "limit=&after_index="])
def test_empty_query_values_mean_the_default(api, users, conversation, query):
    """Found with seed 20230301: `?limit=` was served as the default while the description said
    integer; the description now says so (allowEmptyValue) and this keeps the behaviour."""
    api.post(
        f"/conversations/{conversation.pk}/messages", {"content": "hi"}, format="json", HTTP_USER_ID=str(users[0].pk)
    )
    response = api.get(f"/conversations/{conversation.pk}/messages?{query}")
    assert response.status_code == 200
    assert [m["content"] for m in response.json()["messages"]] == ["hi"]


@pytest.mark.parametrize("path, field", [("messages", "content"), ("users", "name")])
def test_unpaired_surrogate_in_text_is_a_400_not_a_500(api, users, conversation, path, field):
    """Found by hand while fuzzing: JSON can escape half a surrogate pair, which PostgreSQL cannot store."""
    url = f"/conversations/{conversation.pk}/messages" if path == "messages" else "/users"
    body = f'{{"{field}": "half \\ud800 a pair"}}'
    response = api.post(url, body, content_type="application/json", HTTP_USER_ID=str(users[0].pk))
    assert response.status_code == 400
    assert response.json() == {"error": f"{field} must be valid Unicode text (it has an unpaired surrogate)"}


def test_a_whole_surrogate_pair_is_stored_as_its_character(api, users, conversation):
    response = api.post(
        f"/conversations/{conversation.pk}/messages",
        '{"content": "\\ud83d\\ude00"}',
        content_type="application/json",
        HTTP_USER_ID=str(users[0].pk),
    )
    assert response.status_code == 201
    assert response.json()["message"]["content"] == "\U0001f600"


@pytest.mark.parametrize("path", ["/conversations", "/users"])
def test_json_nested_too_deeply_is_a_400_not_a_500(api, users, path):
    """Found by hand while fuzzing: a 4 kB body of nested arrays made the JSON decoder overflow Python's stack."""
    body = '{"participant_ids": ' + "[" * 5000 + "]" * 5000 + "}"
    response = api.post(path, body, content_type="application/json")
    assert response.status_code == 400
    assert response.json() == {"error": "Malformed JSON in request body: JSON parse error - nested too deeply"}


@pytest.mark.parametrize(
    "method, path",
    [
        ("get", "/conversations/{cid}/messages"),
        ("get", "/conversations"),
        ("post", "/conversations/{cid}/messages"),
    ],
)
def test_an_empty_user_id_header_is_malformed_not_absent(api, users, conversation, method, path):
    """Found with seed 7: `User-Id:` with no value was read as no header, so an open read answered 200
    to a value the description (an integer) refuses."""
    body = {"data": {"content": "x"}, "format": "json"} if method == "post" else {}
    response = getattr(api, method)(path.format(cid=conversation.pk), HTTP_USER_ID="", **body)
    assert response.status_code == 400
    assert response.json() == {"error": "User-Id header must be a positive integer, got ''"}


@pytest.mark.parametrize("path", ["/conversations", "/conversations/{cid}/messages"])
def test_a_user_id_of_thousands_of_digits_is_400_not_500(api, conversation, path):
    """Found by tests/test_refusals.py: Python refuses int() of more than 4,300 digits (a ValueError, so a 500);
    the length is now checked first."""
    response = api.get(path.format(cid=conversation.pk), HTTP_USER_ID="9" * 5000)
    assert response.status_code == 400
    assert response.json() == {"error": "User-Id header must be a positive integer no larger than 9223372036854775807"}


def test_leading_zeros_do_not_count_against_an_ids_length(api, users, conversation):
    response = api.get("/conversations", HTTP_USER_ID="0" * 5000 + str(users[0].pk))
    assert response.status_code == 200
    assert [c["id"] for c in response.json()["conversations"]] == [conversation.pk]
