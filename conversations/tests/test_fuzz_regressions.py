"""What the fuzzer (tests/test_fuzz.py, schemathesis) found once, kept as regular tests."""

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
    api.post(f"/conversations/{conversation.pk}/messages", {"content": "hi"}, format="json",
             HTTP_USER_ID=str(users[0].pk))
    response = api.get(f"/conversations/{conversation.pk}/messages?{query}")
    assert response.status_code == 200
    assert [m["content"] for m in response.json()["messages"]] == ["hi"]
