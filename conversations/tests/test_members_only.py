"""Members only: non-participants cannot post, move a view horizon, or (with READS_REQUIRE_MEMBER) read.

Each refusal is a 400 with the contract's text, and no row changes.
"""

import pytest

from conversations.models import Message, Participant
from conversations.tests.client import post_message
from outbox.models import OutboxEvent

pytestmark = pytest.mark.django_db

MISSING_USER = {"error": "Please specify a user id by adding the User-Id header."}


def not_in_conversation(user):
    return {"error": f"User with id {user.pk} is not in conversation"}


def snapshot():
    """Every row a refused request could have touched."""
    return (
        list(Message.objects.order_by("pk").values_list("pk", "content", "index")),
        list(OutboxEvent.objects.order_by("pk").values_list("pk", "payload")),
        list(Participant.objects.order_by("pk").values_list("pk", "last_viewed_index")),
    )


@pytest.fixture
def with_a_message(api, users, conversation):
    response = post_message(api, conversation.pk, users[0].pk, "between us")
    assert response.status_code == 201
    return response.json()["message"]


@pytest.fixture(params=[False, True], ids=["reads-open", "reads-members-only"])
def switch(request, settings):
    settings.READS_REQUIRE_MEMBER = request.param
    return request.param


def test_outsider_cannot_post_in_either_switch_state(api, users, conversation, with_a_message, switch):
    before = snapshot()
    response = post_message(api, conversation.pk, users[2].pk, "let me in")
    assert response.status_code == 400
    assert response.json() == not_in_conversation(users[2])
    assert snapshot() == before


def test_outsider_cannot_set_a_view_horizon_in_either_switch_state(api, users, conversation, with_a_message, switch):
    before = snapshot()
    response = api.post(
        f"/conversations/{conversation.pk}/view_horizon", {"index": 1}, format="json", HTTP_USER_ID=str(users[2].pk)
    )
    assert response.status_code == 400
    assert response.json() == not_in_conversation(users[2])
    assert snapshot() == before


def test_reads_are_open_by_default_as_in_the_tutorial(api, users, conversation, with_a_message, settings):
    assert settings.READS_REQUIRE_MEMBER is False
    anonymous = api.get(f"/conversations/{conversation.pk}/messages")
    outsider = api.get(f"/conversations/{conversation.pk}/messages", HTTP_USER_ID=str(users[2].pk))
    assert anonymous.status_code == outsider.status_code == 200
    assert [m["content"] for m in anonymous.json()["messages"]] == ["between us"]
    assert outsider.json() == anonymous.json()


def test_members_only_reads_refuse_an_outsider(api, users, conversation, with_a_message, settings):
    settings.READS_REQUIRE_MEMBER = True
    before = snapshot()
    response = api.get(f"/conversations/{conversation.pk}/messages", HTTP_USER_ID=str(users[2].pk))
    assert response.status_code == 400
    assert response.json() == not_in_conversation(users[2])
    assert snapshot() == before


def test_members_only_reads_need_the_user_id_header(api, users, conversation, with_a_message, settings):
    settings.READS_REQUIRE_MEMBER = True
    response = api.get(f"/conversations/{conversation.pk}/messages")
    assert response.status_code == 400
    assert response.json() == MISSING_USER


@pytest.mark.parametrize("member", [0, 1])
def test_members_only_reads_serve_each_participant(api, users, conversation, with_a_message, settings, member):
    settings.READS_REQUIRE_MEMBER = True
    response = api.get(f"/conversations/{conversation.pk}/messages", HTTP_USER_ID=str(users[member].pk))
    assert response.status_code == 200
    assert response.json() == {
        "messages": [
            {
                "id": with_a_message["id"],
                "content": "between us",
                "user_id": users[0].pk,
                "channel_id": conversation.pk,
                "index": 1,
                "inserted_at": with_a_message["inserted_at"],
                "username": users[0].name,
            }
        ]
    }


def test_members_only_read_of_a_missing_conversation_is_404(api, users, settings):
    settings.READS_REQUIRE_MEMBER = True
    response = api.get("/conversations/987654321/messages", HTTP_USER_ID=str(users[0].pk))
    assert response.status_code == 404
    assert response.json() == {"error": "Conversation with id 987654321 not found"}


def test_members_only_switch_comes_from_the_schema():
    from core.config import load

    assert load({}).READS_REQUIRE_MEMBER is False
    assert load({"READS_REQUIRE_MEMBER": "true"}).READS_REQUIRE_MEMBER is True
