"""Bad input never reaches a 500: every malformed request is a 4xx `{"error": ...}` and writes nothing."""

import pytest

from conversations.models import Conversation, Message, Participant

pytestmark = pytest.mark.django_db


def assert_refused(response, status=400):
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]


def assert_nothing_written():
    assert Message.objects.count() == 0
    assert Conversation.objects.filter(last_index__gt=0).count() == 0


def raw_post(api, path, body: bytes, **headers):
    return api.generic("POST", path, body, content_type="application/json", **headers)


# --- bodies ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/conversations", "/conversations/{cid}/messages", "/conversations/{cid}/view_horizon", "/users"]
)
@pytest.mark.parametrize("body", [b"{bad", b"[1, 2]", b'"text"', b"42", b"null", b"\xff\xfe", b'{"a": NaN'])
def test_malformed_or_non_object_bodies_are_refused(api, users, conversation, path, body):
    response = raw_post(api, path.format(cid=conversation.pk), body, HTTP_USER_ID=str(users[0].pk))
    assert_refused(response)
    assert_nothing_written()
    assert Conversation.objects.count() == 1


def test_malformed_json_names_the_problem(api, users):
    response = raw_post(api, "/conversations", b"{bad")
    assert response.json()["error"].startswith("Malformed JSON in request body")


def test_non_json_content_type_is_refused_with_415(api, users):
    response = api.generic("POST", "/conversations", b"participant_ids=1", content_type="text/plain")
    assert_refused(response, 415)


@pytest.mark.parametrize(
    "participant_ids, error",
    [
        ("1,2", "participant_ids must be a list of user ids"),
        ({"a": 1}, "participant_ids must be a list of user ids"),
        ([1, "2"], "participant_ids must contain only integer user ids"),
        ([1.5, 2], "participant_ids must contain only integer user ids"),
        ([True, 2], "participant_ids must contain only integer user ids"),
        ([None, 2], "participant_ids must contain only integer user ids"),
    ],
)
def test_conversation_create_refuses_wrong_participant_types(api, users, participant_ids, error):
    response = api.post("/conversations", {"participant_ids": participant_ids})
    assert response.status_code == 400
    assert response.json() == {"error": error}
    assert Conversation.objects.count() == 0


@pytest.mark.parametrize("ids", [[2**63, 1], [-1, 1], [0, 1], [10**30, 1]])
def test_conversation_create_with_out_of_range_ids_names_no_known_participants(api, users, ids):
    response = api.post("/conversations", {"participant_ids": ids})
    assert response.status_code == 400
    assert response.json() == {"error": "participant_ids provided did not match to two known participants"}
    assert Conversation.objects.count() == 0


@pytest.mark.parametrize("content", [None, "", "   ", 42, ["a"], {"text": "x"}, True])
def test_message_create_refuses_content_that_is_not_a_non_empty_string(api, users, conversation, content):
    body = {} if content is None else {"content": content}
    response = api.post(f"/conversations/{conversation.pk}/messages", body, HTTP_USER_ID=str(users[0].pk))
    assert response.status_code == 400
    assert response.json() == {"error": "content must be a non-empty string"}
    assert_nothing_written()


@pytest.mark.parametrize("index", [None, -1, "3", 1.5, True, [1], 2**63])
def test_view_horizon_refuses_index_that_is_not_a_non_negative_integer(api, users, conversation, index):
    body = {} if index is None else {"index": index}
    response = api.post(f"/conversations/{conversation.pk}/view_horizon", body, HTTP_USER_ID=str(users[0].pk))
    assert response.status_code == 400
    assert response.json() == {"error": "index must be a non-negative integer"}
    assert set(Participant.objects.values_list("last_viewed_index", flat=True)) == {0}


# --- ids in paths and headers -------------------------------------------------------


@pytest.mark.parametrize("raw", ["abc", "-1", "0", "1.5", "9223372036854775808", "١٢"])
def test_non_numeric_or_out_of_range_conversation_ids_are_400(api, users, raw):
    for method, path, body in [
        ("get", f"/conversations/{raw}/messages", None),
        ("post", f"/conversations/{raw}/messages", {"content": "x"}),
        ("post", f"/conversations/{raw}/view_horizon", {"index": 1}),
    ]:
        response = getattr(api, method)(path, body, HTTP_USER_ID=str(users[0].pk))
        assert response.status_code == 400, (method, path, response.content)
        assert response.json()["error"].startswith("Conversation id must be a positive integer")
    assert_nothing_written()


def test_largest_bigint_conversation_id_is_a_404_not_a_500(api, users):
    response = api.get(f"/conversations/{2**63 - 1}/messages")
    assert response.status_code == 404


@pytest.mark.parametrize("raw", ["abc", "-3", "0", "1e3", "99999999999999999999"])
def test_malformed_user_id_header_is_400(api, users, conversation, raw):
    response = api.post(f"/conversations/{conversation.pk}/messages", {"content": "x"}, HTTP_USER_ID=raw)
    assert response.status_code == 400
    assert response.json()["error"].startswith("User-Id header must be a positive integer")
    assert_nothing_written()


def test_user_id_header_naming_no_user_is_400(api, users, conversation):
    response = api.get("/conversations", HTTP_USER_ID="987654")
    assert response.status_code == 400
    assert response.json() == {"error": "User-Id header names no known user: 987654"}


def test_wrong_method_is_a_json_405(api, db):
    response = api.delete("/conversations")
    assert response.status_code == 405
    assert response.json() == {"error": 'Method "DELETE" not allowed.'}


def test_body_over_the_limit_is_413_and_stores_nothing(api, users, conversation, settings):
    settings.JSON_BODY_LIMIT = 40
    response = api.post(
        f"/conversations/{conversation.pk}/messages", {"content": "x" * 40}, HTTP_USER_ID=str(users[0].pk)
    )
    assert response.status_code == 413
    assert response.json() == {"error": "Request body is larger than JSON_BODY_LIMIT (40 bytes)"}
    assert_nothing_written()
