"""The HTTP API of CONTRACT.md section 1: status codes, JSON keys, error texts, rows left."""

import re

import pytest

from conversations.models import Conversation, Message, Participant, User
from conversations.tests.client import post_message
from outbox.models import OutboxEvent

pytestmark = pytest.mark.django_db

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
MISSING_USER = {"error": "Please specify a user id by adding the User-Id header."}


# --- GET /health -------------------------------------------------------------


def test_health_answers_ok_as_plain_text(api):
    response = api.get("/health")
    assert response.status_code == 200
    assert response.content == b"OK"
    assert response["Content-Type"].startswith("text/plain")


# --- POST /conversations -----------------------------------------------------


def test_conversation_create_returns_id_and_timestamp(api, users):
    response = api.post("/conversations", {"participant_ids": [users[0].pk, users[1].pk]})
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"conversation"}
    assert set(body["conversation"]) == {"id", "inserted_at"}
    conversation = Conversation.objects.get()
    assert body["conversation"]["id"] == conversation.pk
    assert ISO_MS.match(body["conversation"]["inserted_at"])
    assert sorted(Participant.objects.filter(conversation=conversation).values_list("user_id", flat=True)) == [
        users[0].pk,
        users[1].pk,
    ]


@pytest.mark.parametrize(
    "ids_of",
    [
        lambda u: [u[0].pk, u[0].pk],  # duplicate users
        lambda u: [u[0].pk, u[1].pk, u[2].pk],  # more than two
        lambda u: [u[0].pk],  # fewer than two
        lambda u: [],
    ],
    ids=["duplicate", "three", "one", "none"],
)
def test_conversation_create_refuses_other_than_two_unique_users(api, users, ids_of):
    response = api.post("/conversations", {"participant_ids": ids_of(users)})
    assert response.status_code == 400
    assert response.json() == {"error": "Conversation must have 2 unique users"}
    assert Conversation.objects.count() == 0


def test_conversation_create_without_participants_uses_the_contract_text(api, users):
    """The seed's first curl: a body with no participant_ids at all."""
    response = api.post("/conversations", {"text": "hello"})
    assert response.status_code == 400
    assert response.json() == {"error": "Conversation must have 2 unique users"}


def test_conversation_create_refuses_unknown_user(api, users):
    unknown = max(u.pk for u in users) + 1
    response = api.post("/conversations", {"participant_ids": [users[0].pk, unknown]})
    assert response.status_code == 400
    assert response.json() == {"error": "participant_ids provided did not match to two known participants"}
    assert Conversation.objects.count() == 0
    assert Participant.objects.count() == 0


def test_conversation_create_refuses_existing_pair_in_either_order(api, users):
    first = api.post("/conversations", {"participant_ids": [users[0].pk, users[1].pk]}).json()
    response = api.post("/conversations", {"participant_ids": [users[1].pk, users[0].pk]})
    assert response.status_code == 400
    assert response.json() == {
        "error": f"A conversation between these two users already exists with id {first['conversation']['id']}"
    }
    assert Conversation.objects.count() == 1


def test_conversation_create_allows_a_different_pair_when_both_users_have_others(api, users):
    """The reference refused this pair because each user already had some conversation."""
    api.post("/conversations", {"participant_ids": [users[0].pk, users[1].pk]})
    api.post("/conversations", {"participant_ids": [users[1].pk, users[2].pk]})
    response = api.post("/conversations", {"participant_ids": [users[0].pk, users[2].pk]})
    assert response.status_code == 201
    assert Conversation.objects.count() == 3


def test_one_conversation_per_pair_is_enforced_by_the_database(users):
    from django.db import IntegrityError, transaction

    low, high = sorted([users[0].pk, users[1].pk])
    Conversation.objects.create(user_low_id=low, user_high_id=high)
    with pytest.raises(IntegrityError), transaction.atomic():
        Conversation.objects.create(user_low_id=low, user_high_id=high)


# --- GET /conversations ------------------------------------------------------


def test_conversation_list_requires_user_id(api, conversation):
    response = api.get("/conversations")
    assert response.status_code == 400
    assert response.json() == MISSING_USER


def test_conversation_list_names_each_after_the_other_participant(api, users, conversation):
    other = api.post("/conversations", {"participant_ids": [users[2].pk, users[0].pk]}).json()["conversation"]
    response = api.get("/conversations", HTTP_USER_ID=str(users[0].pk))
    assert response.status_code == 200
    assert response.json() == {
        "conversations": [
            {
                "id": conversation.pk,
                "inserted_at": response.json()["conversations"][0]["inserted_at"],
                "name": users[1].name,
            },
            {"id": other["id"], "inserted_at": other["inserted_at"], "name": users[2].name},
        ]
    }


def test_conversation_list_shows_only_the_callers_conversations(api, users, conversation):
    response = api.get("/conversations", HTTP_USER_ID=str(users[2].pk))
    assert response.status_code == 200
    assert response.json() == {"conversations": []}


def test_conversation_list_pages_with_a_next_link(api, users):
    extra = [User.objects.create(name=f"friend {i}") for i in range(3)]
    for friend in extra:
        api.post("/conversations", {"participant_ids": [users[0].pk, friend.pk]})
    first = api.get("/conversations?limit=2", HTTP_USER_ID=str(users[0].pk)).json()
    assert [c["name"] for c in first["conversations"]] == ["friend 0", "friend 1"]
    second = api.get(first["next"], HTTP_USER_ID=str(users[0].pk)).json()
    assert [c["name"] for c in second["conversations"]] == ["friend 2"]
    assert "next" not in second


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "unprepared"])
def test_conversation_list_costs_one_query_for_the_page(api, users, settings, django_assert_num_queries, prepared):
    """One statement checks the caller and reads the page with the names, prepared or not (PG_PREPARED_STATEMENTS)."""
    settings.PG_PREPARED_STATEMENTS = prepared
    for i in range(5):
        friend = User.objects.create(name=f"friend {i}")
        api.post("/conversations", {"participant_ids": [users[0].pk, friend.pk]})
    with django_assert_num_queries(1):
        response = api.get("/conversations", HTTP_USER_ID=str(users[0].pk))
    assert response.status_code == 200
    assert [c["name"] for c in response.json()["conversations"]] == [f"friend {i}" for i in range(5)]


# --- POST /conversations/{id}/messages ----------------------------------------


def test_message_create_returns_the_contract_body_and_stores_one_row(api, users, conversation):
    response = post_message(api, conversation.pk, users[0].pk, "This is the first message")
    assert response.status_code == 201
    message = Message.objects.get()
    assert response.json() == {
        "message": {
            "id": message.pk,
            "content": "This is the first message",
            "index": 1,
            "user_id": users[0].pk,
            "username": "James Blanderphone",
            "conversation_id": conversation.pk,
            "inserted_at": response.json()["message"]["inserted_at"],
        }
    }
    assert ISO_MS.match(response.json()["message"]["inserted_at"])
    assert (message.conversation_id, message.user_id, message.index) == (conversation.pk, users[0].pk, 1)


def test_message_create_returns_an_increasing_index(api, users, conversation):
    first = post_message(api, conversation.pk, users[0].pk, "Clambering over rocks").json()["message"]["index"]
    second = post_message(api, conversation.pk, users[1].pk, "Picnic on a blustery day").json()["message"]["index"]
    assert (first, second) == (1, 2)


def test_message_indexes_are_per_conversation(api, users, conversation):
    other = api.post("/conversations", {"participant_ids": [users[0].pk, users[2].pk]}).json()["conversation"]["id"]
    post_message(api, conversation.pk, users[0].pk)
    response = post_message(api, other, users[0].pk)
    assert response.json()["message"]["index"] == 1


def test_message_create_requires_user_id(api, conversation):
    response = api.post(f"/conversations/{conversation.pk}/messages", {"content": "hi"})
    assert response.status_code == 400
    assert response.json() == MISSING_USER
    assert Message.objects.count() == 0


def test_message_create_refuses_user_outside_conversation(api, users, conversation):
    response = post_message(api, conversation.pk, users[2].pk)
    assert response.status_code == 400
    assert response.json() == {"error": f"User with id {users[2].pk} is not in conversation"}
    assert Message.objects.count() == 0
    assert OutboxEvent.objects.count() == 0
    assert Conversation.objects.get().last_index == 0


def test_message_create_in_unknown_conversation_is_404(api, users, conversation):
    response = post_message(api, conversation.pk + 1000, users[0].pk)
    assert response.status_code == 404
    assert response.json() == {"error": f"Conversation with id {conversation.pk + 1000} not found"}
    assert Message.objects.count() == 0


def test_message_create_writes_its_event_to_the_outbox_in_the_same_transaction(api, users, conversation):
    post_message(api, conversation.pk, users[1].pk)
    event = OutboxEvent.objects.get()
    assert event.event_id == f"{conversation.pk}:1"
    assert event.payload == {
        "type": "new_message",
        "channel_id": conversation.pk,
        "user_id": users[1].pk,
        "index": 1,
        "participant_ids": sorted([users[0].pk, users[1].pk]),
    }
    assert event.sent_at is None


# --- GET /conversations/{id}/messages -----------------------------------------


def test_message_list_returns_contract_keys_in_index_order(api, users, conversation):
    post_message(api, conversation.pk, users[0].pk, "The first message")
    post_message(api, conversation.pk, users[1].pk, "The second message")
    response = api.get(f"/conversations/{conversation.pk}/messages")
    assert response.status_code == 200
    messages = response.json()["messages"]
    assert [set(m) for m in messages] == [
        {"id", "content", "user_id", "channel_id", "index", "inserted_at", "username"}
    ] * 2
    assert [(m["index"], m["content"], m["user_id"], m["channel_id"], m["username"]) for m in messages] == [
        (1, "The first message", users[0].pk, conversation.pk, "James Blanderphone"),
        (2, "The second message", users[1].pk, conversation.pk, "Normalavian Ropetoter"),
    ]
    assert "next" not in response.json()


def test_message_list_of_empty_conversation_is_empty(api, conversation):
    response = api.get(f"/conversations/{conversation.pk}/messages")
    assert response.status_code == 200
    assert response.json() == {"messages": []}


def test_message_list_of_unknown_conversation_is_404(api, db):
    response = api.get("/conversations/999999/messages")
    assert response.status_code == 404
    assert response.json() == {"error": "Conversation with id 999999 not found"}


def test_message_list_pages_by_after_index(api, users, conversation):
    for i in range(5):
        post_message(api, conversation.pk, users[0].pk, f"m{i + 1}")
    first = api.get(f"/conversations/{conversation.pk}/messages?limit=2").json()
    assert [m["index"] for m in first["messages"]] == [1, 2]
    assert first["next"] == f"http://testserver/conversations/{conversation.pk}/messages?after_index=2&limit=2"
    second = api.get(first["next"]).json()
    assert [m["index"] for m in second["messages"]] == [3, 4]
    third = api.get(second["next"]).json()
    assert [m["index"] for m in third["messages"]] == [5]
    assert "next" not in third


def test_message_list_defaults_to_a_page_of_100(api, users, conversation):
    Message.objects.bulk_create(
        Message(content=f"m{i}", user=users[0], conversation=conversation, index=i) for i in range(1, 151)
    )
    body = api.get(f"/conversations/{conversation.pk}/messages").json()
    assert len(body["messages"]) == 100
    assert body["next"].endswith("after_index=100&limit=100")


def test_message_list_page_is_one_query(api, users, conversation, django_assert_num_queries):
    for _ in range(3):
        post_message(api, conversation.pk, users[0].pk)
    with django_assert_num_queries(1):
        response = api.get(f"/conversations/{conversation.pk}/messages")
    assert response.status_code == 200
    assert [(m["index"], m["user_id"], m["channel_id"]) for m in response.json()["messages"]] == [
        (i, users[0].pk, conversation.pk) for i in (1, 2, 3)
    ]


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=abc", "after_index=-1", "after_index=x"])
def test_message_list_refuses_bad_paging_parameters(api, conversation, query):
    response = api.get(f"/conversations/{conversation.pk}/messages?{query}")
    assert response.status_code == 400
    assert "error" in response.json()
    assert response.json()["error"].split()[0] in {"limit", "after_index"}


# --- POST /conversations/{id}/view_horizon ------------------------------------


def test_view_horizon_is_stored_and_answers_204(api, users, conversation):
    response = api.post(f"/conversations/{conversation.pk}/view_horizon", {"index": 12}, HTTP_USER_ID=str(users[0].pk))
    assert response.status_code == 204
    assert response.content == b""
    assert Participant.objects.get(conversation=conversation, user=users[0]).last_viewed_index == 12
    assert Participant.objects.get(conversation=conversation, user=users[1]).last_viewed_index == 0


def test_view_horizon_never_moves_backwards(api, users, conversation):
    url = f"/conversations/{conversation.pk}/view_horizon"
    api.post(url, {"index": 12}, HTTP_USER_ID=str(users[0].pk))
    response = api.post(url, {"index": 5}, HTTP_USER_ID=str(users[0].pk))
    assert response.status_code == 204
    assert Participant.objects.get(conversation=conversation, user=users[0]).last_viewed_index == 12


def test_view_horizon_requires_user_id(api, conversation):
    response = api.post(f"/conversations/{conversation.pk}/view_horizon", {"index": 1})
    assert response.status_code == 400
    assert response.json() == MISSING_USER


def test_view_horizon_refuses_user_outside_conversation(api, users, conversation):
    response = api.post(f"/conversations/{conversation.pk}/view_horizon", {"index": 3}, HTTP_USER_ID=str(users[2].pk))
    assert response.status_code == 400
    assert response.json() == {"error": f"User with id {users[2].pk} is not in conversation"}
    assert set(Participant.objects.values_list("last_viewed_index", flat=True)) == {0}


# --- users -------------------------------------------------------------------


def test_user_create_and_list(api, db):
    response = api.post("/users", {"name": "Ada"})
    assert response.status_code == 201
    created = response.json()["user"]
    assert created["name"] == "Ada" and isinstance(created["id"], int) and ISO_MS.match(created["inserted_at"])
    assert api.get("/users").json() == {"users": [created]}


def test_user_create_refuses_missing_name(api, db):
    response = api.post("/users", {"name": " "})
    assert response.status_code == 400
    assert response.json() == {"error": "name must be a non-empty string"}
    assert User.objects.count() == 0


# --- routes ------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/conversations/", "/health/", "/users/"])
def test_trailing_slash_is_not_redirected(api, db, path):
    response = api.get(path)
    assert response.status_code == 404
    assert response.json() == {"error": f"No route for GET {path}"}


def test_unknown_route_is_a_json_404(api, db):
    response = api.get("/nothing/here")
    assert response.status_code == 404
    assert response.json() == {"error": "No route for GET /nothing/here"}


def test_browsable_api_answers_html_on_the_same_url(api, users, conversation):
    response = api.get(f"/conversations/{conversation.pk}/messages", HTTP_ACCEPT="text/html")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert b"Django REST framework" in response.content
