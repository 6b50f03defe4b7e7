"""new_message events through the outbox, Celery and the real RabbitMQ (CONTRACT.md section 6).

Everything here is real: the PostgreSQL test database, RabbitMQ (in a vhost of
this module's own, deleted afterwards), `celery -A messenger worker`
subprocesses, and pika reading `chat_queue` the way the notifier would. Outages
come from a TCP proxy in front of RabbitMQ that the test cuts. Posts go through
the API in this process, so its after-commit enqueue is the production one.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, connections, transaction
from rest_framework.test import APIClient

from conversations import services
from conversations.models import Message
from outbox import kicker, relay, wire
from outbox.models import OutboxEvent
from tests.support.processes import wait_until
from tests.support.rabbitmq import AMQP_PORT, CeleryWorker, QueueReader, RabbitVhost
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CELERY_QUEUE = "messenger.tasks"
# Generous bound for one post while the broker is unreachable: an enqueue that
# waited on the broker would take its 2 s connect timeout or hang outright.
POST_BOUND = 1.0


@pytest.fixture(scope="module")
def vhost():
    vhost = RabbitVhost().create()
    try:
        yield vhost
    finally:
        vhost.delete()


@pytest.fixture
def chat_queue(vhost):
    """chat_queue, declared as the notifier declares it, empty at the start of the test."""
    reader = QueueReader(vhost, wire.QUEUE_NAME)
    reader.declare()
    reader.purge()
    try:
        yield reader
    finally:
        reader.close()


@pytest.fixture
def broker(settings, vhost):
    """This process's broker (enqueue and relay) is the test vhost, through a proxy the test can cut."""
    with TcpProxy(AMQP_PORT) as proxy:
        settings.CELERY_BROKER_URL = vhost.url(proxy.port)
        try:
            yield proxy
        finally:
            relay.close_publisher()


@pytest.fixture
def start_worker(tmp_path, vhost):
    """Start real Celery workers on the test database and vhost; all are stopped after the test."""
    started: list[CeleryWorker] = []
    db = connection.settings_dict

    def start(*, port: int = AMQP_PORT, beat: bool = False, **env: str) -> CeleryWorker:
        worker_env = {
            "PGHOST": db["HOST"],
            "PGPORT": str(db["PORT"]),
            "PGUSER": db["USER"],
            "PGDATABASE": db["NAME"],
            "AMQPHOST": "127.0.0.1",
            "AMQPPORT": str(port),
            "AMQPVHOST": vhost.name,
            "EVENTS_SWEEP_INTERVAL": "1s",
            "LOG_LEVEL": "INFO",
            **env,
        }
        worker = CeleryWorker(worker_env, tmp_path, beat=beat, name=f"worker{len(started) + 1}")
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop()


def post(api, conversation, user, content="hello"):
    return api.post(
        f"/conversations/{conversation.pk}/messages", {"content": content}, format="json", HTTP_USER_ID=str(user.pk)
    )


def pending() -> int:
    return OutboxEvent.objects.filter(sent_at__isnull=True).count()


def event_ids(deliveries) -> list[str]:
    return [d.properties.message_id for d in deliveries]


def indexes(deliveries) -> list[int]:
    return [int(d.properties.message_id.split(":")[1]) for d in deliveries]


def test_posted_message_reaches_chat_queue_with_the_contract_properties_and_body(
    api, users, conversation, broker, chat_queue, start_worker
):
    """The after-commit enqueue alone (no beat) gets the event to chat_queue, byte for byte."""
    worker = start_worker()
    alice, bob = users[0], users[1]

    response = post(api, conversation, alice, "first")

    assert response.status_code == 201
    [delivery] = chat_queue.wait_for(1, timeout=20)
    props = delivery.properties
    assert (props.type, props.content_type, props.delivery_mode, props.message_id) == (
        "new_message",
        "application/json",
        2,
        f"{conversation.pk}:1",
    )
    assert (
        delivery.body
        == (
            f'{{"type":"new_message","channel_id":{conversation.pk},"user_id":{alice.pk},'
            f'"index":1,"participant_ids":[{alice.pk},{bob.pk}]}}'
        ).encode()
    )
    wait_until(lambda: pending() == 0, 10, what="the outbox row marked sent")
    row = OutboxEvent.objects.get()
    assert (row.event_id, row.attempts, row.sent_at is not None) == (f"{conversation.pk}:1", 1, True)
    # Declared exactly as the notifier declares it, and consumed by nobody here;
    # the worker listens on Celery's own queue.
    assert chat_queue.declare() == (0, 0)
    assert chat_queue.consumers(CELERY_QUEUE) == 1
    assert "relay_outbox" in worker.log()


def test_a_worker_given_a_cluster_s_nodes_moves_past_one_that_refuses(users, conversation, start_worker, chat_queue):
    """AMQPHOST names several nodes (a RabbitMQ cluster's): the worker's Celery connection and its relay's
    publisher each fail over to the next node when one refuses, here 127.0.0.2 where nothing listens."""
    # The worker's beat sweep relays (this process kicks no relay: no broker is configured here).
    worker = start_worker(AMQPHOST="127.0.0.2,127.0.0.1", beat=True)
    services.message_create(conversation_id=conversation.pk, user_id=users[0].pk, content="through the next node")
    [delivery] = chat_queue.wait_for(1, timeout=30)
    assert json.loads(delivery.body)["index"] == 1
    assert chat_queue.consumers(CELERY_QUEUE) == 1, worker.log()


def test_a_worker_whose_queue_is_a_quorum_queue_consumes_and_relays(users, conversation, start_worker):
    """AMQP_QUORUM_QUEUES (a RabbitMQ cluster): Celery's own queue is declared a quorum queue, and the worker
    takes a per-consumer prefetch, which quorum queues require (a global one is refused). In a vhost of its
    own: a queue's type is fixed once declared."""
    vhost = RabbitVhost().create()
    reader = QueueReader(vhost, wire.QUEUE_NAME)
    worker = None
    try:
        reader.declare()
        worker = start_worker(AMQPVHOST=vhost.name, AMQP_QUORUM_QUEUES="true", beat=True)
        services.message_create(conversation_id=conversation.pk, user_id=users[0].pk, content="on a quorum queue")
        [delivery] = reader.wait_for(1, timeout=30)
        assert json.loads(delivery.body)["index"] == 1
        assert "Global QoS is disabled" in worker.log()
    finally:
        reader.close()
        if worker is not None:
            worker.stop()
        vhost.delete()


def test_rolled_back_message_produces_no_event(users, conversation, broker, chat_queue):
    alice = users[0]

    class Abort(Exception):
        pass

    with pytest.raises(Abort):
        with transaction.atomic():
            services.message_create(conversation_id=conversation.pk, user_id=alice.pk, content="never")
            raise Abort

    assert OutboxEvent.objects.count() == 0
    assert relay.relay_pending() == 0
    assert chat_queue.drain() == []

    # The next committed message takes index 1 again, and only it is published.
    services.message_create(conversation_id=conversation.pk, user_id=alice.pk, content="kept")
    assert relay.relay_pending() == 1
    assert event_ids(chat_queue.drain()) == [f"{conversation.pk}:1"]


def test_posts_answer_fast_while_the_broker_is_down_and_every_event_arrives_once_it_is_back(
    api, users, conversation, broker, chat_queue, start_worker, caplog
):
    """A worker with its beat sweep, both behind the cut proxy: nothing waits, nothing is lost or doubled."""
    worker = start_worker(port=broker.port, beat=True)
    alice, bob = users[0], users[1]
    assert post(api, conversation, alice, "before").status_code == 201
    chat_queue.wait_for(1, timeout=20)

    broker.cut("reset")
    latencies, statuses = [], []
    for n in range(30):
        started = time.monotonic()
        statuses.append(post(api, conversation, bob if n % 2 else alice, f"during {n}").status_code)
        latencies.append(time.monotonic() - started)
    # This process's enqueues have failed, and the worker has lost the broker (its beat sweeps with it).
    wait_until(
        lambda: "could not enqueue the relay" in caplog.text and "Connection to broker lost" in worker.log(),
        30,
        what="a failed enqueue here and the worker's lost broker connection",
    )
    assert statuses == [201] * 30
    assert max(latencies) < POST_BOUND, latencies
    assert pending() == 30
    assert chat_queue.drain() == []

    broker.restore()
    wait_until(lambda: pending() == 0, 60, what="the sweep to relay the backlog")
    arrived = chat_queue.drain()
    assert event_ids(arrived) == [f"{conversation.pk}:{index}" for index in range(2, 32)]


def test_posts_do_not_wait_on_a_broker_that_accepts_connections_but_never_answers(
    api, users, conversation, broker, chat_queue
):
    alice = users[0]
    broker.cut("blackhole")
    latencies = []
    for n in range(10):
        started = time.monotonic()
        assert post(api, conversation, alice, f"m{n}").status_code == 201
        latencies.append(time.monotonic() - started)
    assert max(latencies) < POST_BOUND, latencies
    assert pending() == 10

    broker.restore()
    assert relay.relay_pending() == 10
    assert indexes(chat_queue.drain()) == list(range(1, 11))


def test_worker_killed_mid_relay_loses_nothing_and_its_redelivered_task_sends_the_rest(
    users, conversation, chat_queue, start_worker, settings, vhost
):
    """SIGKILL the worker between batches; the next worker (no beat) runs the unacked task again."""
    total, batch = 400, 10
    alice = users[0]
    for n in range(total):  # no broker configured in this process yet: nothing is enqueued
        services.message_create(conversation_id=conversation.pk, user_id=alice.pk, content=f"m{n}")
    chat_queue.declare(CELERY_QUEUE)
    chat_queue.purge(CELERY_QUEUE)  # no relay task left over from an earlier test
    settings.CELERY_BROKER_URL = vhost.url()
    kicker.enqueue_relay()  # exactly one relay task, and nothing will send another

    first = start_worker(EVENTS_RELAY_BATCH=str(batch))
    wait_until(lambda: pending() < total, 30, interval=0.005, what="the relay to confirm a first batch")
    first.kill()
    left = pending()
    assert 0 < left < total, "the worker was not killed mid-relay"

    start_worker(EVENTS_RELAY_BATCH=str(batch))
    wait_until(lambda: pending() == 0, 30, what="the redelivered task to send the rest")
    arrived = indexes(chat_queue.drain())
    # Every event arrived; only the batch in flight at the kill may come twice.
    assert set(arrived) == set(range(1, total + 1))
    assert len(arrived) - total <= batch
    first_seen = list(dict.fromkeys(arrived))
    assert first_seen == list(range(1, total + 1))


def test_concurrent_posts_publish_events_whose_indexes_are_the_messages_indexes(
    users, conversation, broker, chat_queue, start_worker
):
    start_worker(beat=True)
    posters, per_poster = 8, 8
    total = posters * per_poster
    barrier = threading.Barrier(posters)

    def post_some(n):
        client = APIClient()
        try:
            barrier.wait(timeout=30)
            user = users[n % 2]
            return [post(client, conversation, user, f"p{n}-{k}").status_code for k in range(per_poster)]
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=posters) as pool:
        statuses = [status for result in pool.map(post_some, range(posters)) for status in result]

    assert statuses == [201] * total
    arrived = chat_queue.wait_for(total, timeout=30)
    messages = {m.index: m for m in Message.objects.filter(conversation=conversation)}
    assert indexes(arrived) == sorted(messages) == list(range(1, total + 1))
    for delivery in arrived:
        payload = json.loads(delivery.body)
        message = messages[payload["index"]]
        assert payload == {
            "type": "new_message",
            "channel_id": conversation.pk,
            "user_id": message.user_id,
            "index": message.index,
            "participant_ids": [users[0].pk, users[1].pk],
        }


def test_two_relays_at_once_publish_each_event_once_in_index_order_per_conversation(
    users, broker, chat_queue, settings
):
    """The row lock makes a second relay wait for the first one's batch: no double send, no overtaking."""
    broker_url, settings.CELERY_BROKER_URL = settings.CELERY_BROKER_URL, None  # backlog first, nothing enqueued
    pairs = [(users[0], users[1]), (users[0], users[2]), (users[1], users[2])]
    conversations = [services.conversation_create(participant_ids=[a.pk, b.pk]) for a, b in pairs]
    for n in range(100):
        for conversation, (author, _) in zip(conversations, pairs, strict=True):
            services.message_create(conversation_id=conversation.pk, user_id=author.pk, content=f"m{n}")
    settings.CELERY_BROKER_URL = broker_url
    barrier = threading.Barrier(2)

    def relay_once(_):
        try:
            barrier.wait(timeout=10)
            return relay.relay_pending(batch_size=10)
        finally:
            relay.close_publisher()
            connections.close_all()

    with ThreadPoolExecutor(max_workers=2) as pool:
        sent = list(pool.map(relay_once, range(2)))

    assert sum(sent) == 300
    arrived = event_ids(chat_queue.drain())
    assert sorted(arrived) == sorted(e.event_id for e in OutboxEvent.objects.all())
    assert len(set(arrived)) == len(arrived) == 300
    for conversation in conversations:
        mine = [int(i.split(":")[1]) for i in arrived if i.startswith(f"{conversation.pk}:")]
        assert mine == list(range(1, 101))


def test_deleted_chat_queue_is_declared_again_and_the_refused_event_is_sent_on_the_next_run(
    users, conversation, broker, chat_queue
):
    alice = users[0]
    services.message_create(conversation_id=conversation.pk, user_id=alice.pk, content="one")
    assert relay.relay_pending() == 1
    chat_queue.delete()  # an operator's mistake; the kept publisher does not know

    services.message_create(conversation_id=conversation.pk, user_id=alice.pk, content="two")
    with pytest.raises(relay.RelayError, match="refused 1 event"):
        relay.relay_pending()
    second = OutboxEvent.objects.get(event_id=f"{conversation.pk}:2")
    assert (second.sent_at, second.attempts) == (None, 1)

    assert relay.relay_pending() == 1
    assert event_ids(chat_queue.drain()) == [f"{conversation.pk}:2"]
    second.refresh_from_db()
    assert (second.sent_at is not None, second.attempts) == (True, 2)


def test_outbox_command_relays_now_and_fails_clearly_while_the_broker_is_down(users, conversation, broker, chat_queue):
    alice = users[0]
    broker.cut("reset")
    services.message_create(conversation_id=conversation.pk, user_id=alice.pk, content="while down")
    with pytest.raises(CommandError, match="Relay failed, pending events stay in the outbox"):
        call_command("outbox", "--relay", stdout=StringIO())
    assert pending() == 1

    broker.restore()
    out = StringIO()
    call_command("outbox", "--relay", stdout=out)
    assert out.getvalue() == "relayed: 1\npending: 0\noldest pending: none\n"
    assert event_ids(chat_queue.drain()) == [f"{conversation.pk}:1"]


# --- idempotent posts ---------------------------------------------------------------


def keyed_post(client, conversation, user, key, content="hello"):
    return client.post(
        f"/conversations/{conversation.pk}/messages",
        {"content": content},
        format="json",
        HTTP_USER_ID=str(user.pk),
        HTTP_IDEMPOTENCY_KEY=key,
    )


def test_replays_and_a_race_on_one_key_publish_one_event_per_message(
    users, conversation, broker, chat_queue, start_worker
):
    """Idempotent replays, and a race on one key, store one message each and publish one event each."""
    start_worker()
    first = keyed_post(APIClient(), conversation, users[0], "once")
    replays = [keyed_post(APIClient(), conversation, users[0], "once") for _ in range(2)]
    assert [r.status_code for r in [first, *replays]] == [201, 201, 201]
    assert all(r.json() == first.json() and r["Idempotent-Replayed"] == "true" for r in replays)

    racers = 8
    barrier = threading.Barrier(racers)

    def race(_):
        try:
            barrier.wait(timeout=30)
            response = keyed_post(APIClient(), conversation, users[1], "double-click", "racing")
            return response.status_code, response.json()["message"]["id"]
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=racers) as pool:
        results = list(pool.map(race, range(racers)))
    assert {status for status, _ in results} == {201}
    assert len({message_id for _, message_id in results}) == 1

    deliveries = chat_queue.wait_for(2, timeout=30)
    # A row is marked sent only once the broker confirmed it, so with none pending every
    # publish there will ever be is in the queue already: a duplicate would be in this drain.
    wait_until(lambda: pending() == 0, 20, what="the outbox relayed")
    deliveries += chat_queue.drain()
    assert sorted(indexes(deliveries)) == [1, 2]
    assert Message.objects.count() == OutboxEvent.objects.count() == 2
