"""Events benchmark: relay throughput with publisher confirms, and post latency while the broker is down.

Usage: PGDATABASE=<a migrated database> python bench/events.py [--events 3000] [--posts 200]

Runs in-process against the real PostgreSQL (libpq variables, as the service
reads them) and the real RabbitMQ on 127.0.0.1:5672, in a vhost of its own that
it deletes afterwards. A TCP proxy in front of RabbitMQ stands in for the outage:
`reset` is a stopped broker, `blackhole` a partition where connections hang.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.rabbitmq import AMQP_PORT, QueueReader, RabbitVhost  # noqa: E402
from tests.support.tcp_proxy import TcpProxy  # noqa: E402


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000, help="outbox rows per relay run")
    parser.add_argument("--posts", type=int, default=200, help="posts per latency scenario")
    args = parser.parse_args()

    vhost = RabbitVhost().create()
    proxy = TcpProxy(AMQP_PORT).start()
    os.environ.update(AMQPHOST="127.0.0.1", AMQPPORT=str(proxy.port), AMQPVHOST=vhost.name, LOG_LEVEL="ERROR")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "messenger.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.test import Client

    from conversations import services
    from outbox import relay, wire
    from outbox.models import OutboxEvent

    broker_url = settings.CELERY_BROKER_URL
    reader = QueueReader(vhost, wire.QUEUE_NAME)
    reader.declare()
    try:
        alice = services.user_create(name="events bench a")
        bob = services.user_create(name="events bench b")
        conversation = services.conversation_create(participant_ids=[alice.pk, bob.pk])

        # Relay throughput: the same rows, pending again before each run.
        settings.CELERY_BROKER_URL = None  # write the backlog without enqueueing anything
        for n in range(args.events):
            services.message_create(conversation_id=conversation.pk, user_id=alice.pk, content=f"m{n}")
        settings.CELERY_BROKER_URL = broker_url
        backlog = OutboxEvent.objects.filter(payload__channel_id=conversation.pk)
        print(f"relay throughput, {args.events} events, persistent, publisher confirms (rate = confirmed / elapsed):")
        for batch in (1, 10, 100, 500):
            count = args.events if batch > 1 else min(args.events, 500)
            backlog.update(sent_at=None)
            first = backlog.order_by("id").values("pk")[:count]
            backlog.exclude(pk__in=first).update(sent_at=backlog.first().created_at)
            reader.purge()
            started = time.monotonic()
            sent = relay.relay_pending(batch_size=batch)
            elapsed = time.monotonic() - started
            print(f"  batch {batch:>4}: {sent:>5} events in {elapsed:6.2f}s = {sent / elapsed:7.0f} events/s")

        # Post latency: in-process requests through the whole Django stack.
        client = Client()
        url = f"/conversations/{conversation.pk}/messages"
        print(f"post latency, {args.posts} posts each (ms):")
        for label, cut in (
            ("no broker configured", None),
            ("broker up", ""),
            ("broker down (reset)", "reset"),
            ("broker partitioned (blackhole)", "blackhole"),
        ):
            settings.CELERY_BROKER_URL = None if cut is None else broker_url
            if cut:
                proxy.cut(cut)
            timings = []
            for n in range(args.posts):
                started = time.monotonic()
                response = client.post(
                    url, {"content": f"l{n}"}, content_type="application/json", HTTP_USER_ID=str(bob.pk)
                )
                timings.append((time.monotonic() - started) * 1000)
                assert response.status_code == 201, response.content
            proxy.restore()
            print(
                f"  {label:<31} p50 {statistics.median(timings):6.2f}  p95 {percentile(timings, 0.95):6.2f}"
                f"  max {max(timings):7.2f}"
            )
        settings.CELERY_BROKER_URL = broker_url
        relay.relay_pending()  # leave nothing pending behind (no worker runs here)
    finally:
        reader.close()
        proxy.stop()
        vhost.delete()


if __name__ == "__main__":
    main()
