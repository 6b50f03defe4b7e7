"""The hot routes' answers, sent plainly and through DRF's renderers, are the same bytes.

A message post, a page of messages and a page of conversations are one
prepared statement each (core.db.pg), which also decides the request's
refusals (unknown user, not a participant, no such conversation); the two
pages come back as JSON text that PostgreSQL wrote, escaped as DRF's renderer
escapes. A plain JSON request is answered without DRF's dispatch
(core/http/plain_json.py); any other Accept header, `?format=json` or the
browsable API goes through DRF's, to the same handler. Each test sends the same
requests both ways and compares status, headers and body bytes, and the rows
left behind; and it checks that each way ran the one statement and nothing else.
"""

from datetime import datetime, timedelta, timezone

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from conversations.models import Conversation, Message, User
from outbox.models import OutboxEvent

pytestmark = pytest.mark.django_db

# Everything JSON escapes, DRF's extra escapes (U+2028, U+2029), text that looks
# like the JSON around it, and characters beyond the BMP.
AWKWARD_TEXTS = [
    "plain",
    'quote " backslash \\ slash / end',
    "controls \x01\x08\t\n\x0b\x0c\r\x1f\x7f",
    "separators \u2028 and \u2029",
    'looks like json ,{"id":1,"content":"x"} ]}',
    "unicode é ß 漢字 😀 \U0001f9ea",
    " leading and trailing spaces ",
]
HEADERS_COMPARED = ("Content-Type", "Allow", "Vary", "Retry-After", "Idempotent-Replayed")


def answer(response) -> tuple:
    """What a client sees: status, the headers that matter, and the exact body bytes."""
    return (response.status_code, {h: response.get(h) for h in HEADERS_COMPARED}, response.content)


# The Accept header of each way: exactly `application/json` is answered plainly; a
# list naming it too is DRF's content negotiation, which picks the same JSON renderer.
PLAIN = {"HTTP_ACCEPT": "application/json"}
THROUGH_DRF = {"HTTP_ACCEPT": "application/json, */*"}


def both_ways(request, statements: int = 1):
    """`request(**accept)` answered plainly, then through DRF's dispatch and renderer.

    Each way must run exactly `statements` statements: one that does the
    work and decides the refusals; none when the input itself is refused.
    """
    results = []
    for accept in (PLAIN, THROUGH_DRF):
        with CaptureQueriesContext(connection) as queries:
            results.append(request(**accept))
        assert len(queries) == statements, [q["sql"] for q in queries]
    return tuple(results)


@pytest.fixture
def awkward_chat(users):
    """A conversation whose messages and usernames hold every awkward text, with awkward timestamps."""
    alice = User.objects.create(name='Alice "the" \\ \u2028 😀')
    conversation = Conversation.objects.create(
        user_low_id=min(alice.pk, users[0].pk), user_high_id=max(alice.pk, users[0].pk)
    )
    conversation.participants.add(alice, users[0])
    base = datetime(2026, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
    microseconds = [0, 999, 1000, 999_999, 500_500, 123_456, 1]
    messages = [
        Message(
            content=text,
            user=alice if i % 2 else users[0],
            conversation=conversation,
            index=i + 1,
            inserted_at=base + timedelta(seconds=i, microseconds=microseconds[i % len(microseconds)]),
        )
        for i, text in enumerate(AWKWARD_TEXTS * 3)
    ]
    Message.objects.bulk_create(messages)
    Conversation.objects.filter(pk=conversation.pk).update(last_index=len(messages))
    return conversation, alice


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?limit=1",
        "?limit=5",
        "?after_index=3&limit=4",
        "?after_index=19",
        "?after_index=21",
        "?limit=1000",
        "?after_index=0&limit=21",
    ],
)
def test_a_page_of_messages_is_the_same_bytes_both_ways(api, awkward_chat, query):
    conversation, _ = awkward_chat
    plain, through_drf = both_ways(lambda **a: api.get(f"/conversations/{conversation.pk}/messages{query}", **a))
    assert answer(plain) == answer(through_drf)
    assert plain.status_code == 200


@pytest.mark.parametrize("members_only", [False, True], ids=["reads-open", "reads-members-only"])
@pytest.mark.parametrize("query", ["", "?limit=5", "?after_index=19"])
def test_a_page_read_with_a_user_id_is_the_same_bytes_both_ways(
    api, settings, awkward_chat, users, members_only, query
):
    """A chat client sends its User-Id on every read: the statement checks the user (and membership) itself."""
    settings.READS_REQUIRE_MEMBER = members_only
    conversation, alice = awkward_chat
    for reader in (alice, users[0]):
        plain, through_drf = both_ways(
            lambda reader=reader, **a: api.get(
                f"/conversations/{conversation.pk}/messages{query}", HTTP_USER_ID=str(reader.pk), **a
            ),
        )
        assert answer(plain) == answer(through_drf)
        assert plain.status_code == 200


@pytest.mark.parametrize("members_only", [False, True], ids=["reads-open", "reads-members-only"])
@pytest.mark.parametrize(
    "case",
    [
        "outsider",
        "unknown user",
        "no such conversation",
        "unknown user, no conversation",
        "no User-Id",
        "malformed User-Id",
        "empty User-Id",
        "bad limit",
    ],
)
def test_a_page_read_refused_is_refused_the_same_both_ways(api, settings, awkward_chat, users, members_only, case):
    """Refusals the statement decides cost that one statement; bad input goes to DRF untouched."""
    settings.READS_REQUIRE_MEMBER = members_only
    conversation, _ = awkward_chat
    outsider, path = users[2], f"/conversations/{conversation.pk}/messages"
    header, statements = {
        "outsider": (str(outsider.pk), 1),
        "unknown user": ("999999999", 1),
        "no such conversation": (str(outsider.pk), 1),
        "unknown user, no conversation": ("999999999", 1),
        "no User-Id": (None, 0 if members_only else 1),
        "malformed User-Id": ("x1", 0),
        "empty User-Id": ("", 0),
        "bad limit": (str(outsider.pk), 0),
    }[case]
    if "no conversation" in case or case == "no such conversation":
        path = "/conversations/987654321/messages"
    if case == "bad limit":
        path += "?limit=0"
    headers = {} if header is None else {"HTTP_USER_ID": header}
    plain, through_drf = both_ways(lambda **a: api.get(path, **headers, **a), statements=statements)
    assert answer(plain) == answer(through_drf)


@pytest.mark.parametrize(
    "path, statements",
    [
        ("/conversations/999999/messages", 1),
        ("/conversations/0/messages", 0),
        ("/conversations/1/messages?limit=0", 0),
        ("/conversations/1/messages?after_index=x", 0),
    ],
)
def test_a_page_request_refused_is_refused_the_same_both_ways(api, db, path, statements):
    plain, through_drf = both_ways(lambda **a: api.get(path, **a), statements=statements)
    assert answer(plain) == answer(through_drf)
    assert plain.status_code in (400, 404)


def test_a_page_of_conversations_is_the_same_bytes_both_ways(api, users, awkward_chat):
    _, alice = awkward_chat
    names = AWKWARD_TEXTS + ["zed"]
    for name in names:  # conversations where the caller is the lower id, and the higher
        friend = User.objects.create(name=name)
        api.post("/conversations", {"participant_ids": [users[1].pk, friend.pk]})
    api.post("/conversations", {"participant_ids": [users[1].pk, users[0].pk]})
    for user, query in [
        (users[1], ""),
        (users[1], "?limit=3"),
        (users[1], "?after_id=1&limit=2"),
        (users[0], ""),
        (alice, ""),
        (users[2], ""),
        (users[1], "?limit=100"),
    ]:
        plain, through_drf = both_ways(
            lambda user=user, query=query, **a: api.get(f"/conversations{query}", HTTP_USER_ID=str(user.pk), **a),
        )
        assert answer(plain) == answer(through_drf), (user.name, query)
        assert plain.status_code == 200


@pytest.mark.parametrize("header, statements", [(None, 0), ("", 0), ("abc", 0), ("0", 0), ("999999", 1), (" 1 ", 1)])
def test_a_conversation_list_refused_is_refused_the_same_both_ways(api, users, header, statements):
    headers = {} if header is None else {"HTTP_USER_ID": header}
    plain, through_drf = both_ways(lambda **a: api.get("/conversations", **headers, **a), statements=statements)
    assert answer(plain) == answer(through_drf)


def _post(api, conversation_id, user_id, body=None, **headers):
    headers.setdefault("HTTP_ACCEPT", "application/json")
    if user_id is not None:
        headers["HTTP_USER_ID"] = str(user_id)
    return api.post(
        f"/conversations/{conversation_id}/messages", {"content": "hello"} if body is None else body, **headers
    )


def _stored(conversation, roles) -> list:
    """The rows the posts left, with the ids that differ between two runs replaced by roles."""
    messages = [
        (m.content, roles[m.user_id], m.index)
        for m in Message.objects.filter(conversation=conversation).order_by("index")
    ]
    events = []
    for event in OutboxEvent.objects.filter(event_id__startswith=f"{conversation.pk}:").order_by("id"):
        payload = event.payload
        assert payload["channel_id"] == conversation.pk
        assert payload["participant_ids"] == [conversation.user_low_id, conversation.user_high_id]
        events.append(
            (
                event.event_id.split(":")[1],
                event.event_type,
                sorted(payload),
                roles[payload["user_id"]],
                payload["index"],
                payload["type"],
                event.sent_at,
                event.attempts,
            )
        )
    return [messages, events, Conversation.objects.get(pk=conversation.pk).last_index]


def _comparable(response, roles) -> tuple:
    status, headers, body = answer(response)
    if status == 201:
        message = response.json()["message"]
        assert list(message) == ["id", "content", "index", "user_id", "username", "conversation_id", "inserted_at"]
        return (
            status,
            headers,
            {
                **message,
                "id": None,
                "conversation_id": None,
                "user_id": roles[message["user_id"]],
                "inserted_at": len(message["inserted_at"]),
            },
        )
    return status, headers, body


def test_message_posts_answer_and_store_the_same_both_ways(api, users, django_capture_on_commit_callbacks):
    """The same posts (and refusals) into two fresh conversations, one per way of answering."""
    outcomes = {}
    for way, accept in (("plain", PLAIN), ("through DRF", THROUGH_DRF)):
        extra = User.objects.create(name="a third user")
        roles = {users[0].pk: "first", extra.pk: "extra"}
        conversation = Conversation.objects.create(user_low_id=users[0].pk, user_high_id=extra.pk)
        conversation.participants.add(users[0], extra)
        cid = conversation.pk
        with django_capture_on_commit_callbacks() as callbacks:
            responses = [
                *[_post(api, cid, users[0].pk, {"content": text}, **accept) for text in AWKWARD_TEXTS],
                _post(api, cid, extra.pk, {"content": "from the other side"}, **accept),
                _post(api, cid, users[2].pk, **accept),  # not a participant
                _post(api, 999_999_999, users[0].pk, **accept),  # no such conversation
                _post(api, cid, 999_999, **accept),  # no such user
                _post(api, cid, None, **accept),  # no User-Id
                _post(api, cid, "x1", **accept),  # malformed User-Id
                _post(api, cid, users[0].pk, {"content": "   "}, **accept),
                _post(api, cid, users[0].pk, {"text": "hi"}, **accept),
                _post(api, cid, users[0].pk, {"content": 5}, **accept),
                _post(api, cid, users[0].pk, '{"content": NaN}', content_type="application/json", **accept),
                _post(api, cid, users[0].pk, '{"content": "x"', content_type="application/json", **accept),
                _post(
                    api, cid, users[0].pk, "content=form", content_type="application/x-www-form-urlencoded", **accept
                ),
                _post(api, "abc", users[0].pk, **accept),
            ]
        answers = [_comparable(response, roles) for response in responses]
        outcomes[way] = (answers, _stored(conversation, roles), len(callbacks))
    for plain, through_drf in zip(outcomes["plain"][0], outcomes["through DRF"][0], strict=True):
        assert plain == through_drf
    assert outcomes["plain"][1:] == outcomes["through DRF"][1:]
    answers, (messages, events, last_index), relay_kicks = outcomes["plain"]
    assert [status for status, _, _ in answers] == [201] * 8 + [
        400,
        404,
        400,
        400,
        400,
        400,
        400,
        400,
        400,
        400,
        415,
        400,
    ]
    assert last_index == len(messages) == len(events) == relay_kicks == 8


def test_a_post_is_one_statement_and_a_page_one_more(api, users, conversation, django_assert_num_queries):
    with django_assert_num_queries(1):
        response = _post(api, conversation.pk, users[0].pk)
    assert response.status_code == 201
    for headers in ({}, {"HTTP_USER_ID": str(users[1].pk)}):
        with django_assert_num_queries(1):
            assert api.get(f"/conversations/{conversation.pk}/messages", **headers).status_code == 200


@pytest.mark.parametrize("case", ["not a participant", "no such conversation", "no such user"])
def test_a_post_refused_by_its_statement_costs_that_one_statement(
    api, users, conversation, django_assert_num_queries, case
):
    """The statement that would have written decides the refusal: nothing is tried a second time."""
    target, author = {
        "not a participant": (conversation.pk, users[2].pk),
        "no such conversation": (999_999_999, users[0].pk),
        "no such user": (conversation.pk, 999_999),
    }[case]
    with django_assert_num_queries(1):
        response = _post(api, target, author)
    assert response.status_code == (404 if case == "no such conversation" else 400)
    assert not Message.objects.exists()


def test_the_post_timestamp_follows_the_stored_row(api, users, conversation):
    body = _post(api, conversation.pk, users[0].pk).json()["message"]
    stored = Message.objects.get(pk=body["id"])
    assert (
        body["inserted_at"]
        == stored.inserted_at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.")
        + f"{stored.inserted_at.microsecond // 1000:03d}Z"
    )
    assert body["username"] == users[0].name


def test_the_browsable_api_still_answers_html_on_the_hot_routes(api, users, conversation):
    _post(api, conversation.pk, users[0].pk)
    page = api.get(f"/conversations/{conversation.pk}/messages", HTTP_ACCEPT="text/html")
    listing = api.get("/conversations", HTTP_ACCEPT="text/html", HTTP_USER_ID=str(users[0].pk))
    for response in (page, listing):
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/html")
    assert b"hello" in page.content
    assert users[1].name.encode() in listing.content


def test_drf_renders_the_one_statement_page_to_the_same_bytes(api, awkward_chat):
    """`?format=json` takes DRF's path to the same handler: its renderer writes what the plain path sends."""
    conversation, alice = awkward_chat
    path = f"/conversations/{conversation.pk}/messages"
    plain = api.get(f"{path}?limit=5", HTTP_USER_ID=str(alice.pk))
    through_drf = api.get(f"{path}?limit=5&format=json", HTTP_USER_ID=str(alice.pk))
    assert through_drf.status_code == plain.status_code == 200
    assert through_drf.content == plain.content


def test_a_keyed_post_and_its_repeats_answer_the_same_both_ways(api, users, conversation):
    """A post with an Idempotency-Key is the same statement with its key; a repeat is replayed whichever way it is answered."""
    key = {"HTTP_IDEMPOTENCY_KEY": "retry-1"}
    first = _post(api, conversation.pk, users[0].pk, **key, **PLAIN)
    again_plain = _post(api, conversation.pk, users[0].pk, **key, **PLAIN)
    again_through_drf = _post(api, conversation.pk, users[0].pk, **key, **THROUGH_DRF)
    assert (first.status_code, first.get("Idempotent-Replayed")) == (201, None)
    assert answer(again_plain) == answer(again_through_drf)
    assert (again_plain.status_code, again_plain["Idempotent-Replayed"]) == (201, "true")
    assert again_plain.content == first.content
    assert list(OutboxEvent.objects.values_list("event_id", flat=True)) == [f"{conversation.pk}:1"]
    assert Message.objects.count() == 1
