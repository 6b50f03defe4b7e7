"""The real RabbitMQ for tests: a throwaway vhost, a notifier-like queue reader, and a Celery worker.

A test run never touches queues outside the vhost it created, so it cannot
disturb other runs (or anything else) on the same broker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pika

from tests.support.processes import REPO_ROOT, stop_process_group, wait_until

AMQP_PORT = 5672


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


class RabbitVhost:
    """A vhost of this test run's own on the machine's RabbitMQ, the guest user allowed in it."""

    def __init__(self, name: str | None = None):
        self.name = name or f"messenger-test-{uuid.uuid4().hex[:10]}"

    def create(self) -> RabbitVhost:
        _rabbitmqctl("add_vhost", self.name)
        _rabbitmqctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")
        return self

    def delete(self) -> None:
        _rabbitmqctl("delete_vhost", self.name)

    def url(self, port: int = AMQP_PORT) -> str:
        return f"amqp://guest:guest@127.0.0.1:{port}/{quote(self.name, safe='')}"


@dataclass(frozen=True)
class Delivery:
    properties: pika.BasicProperties
    body: bytes


class QueueReader:
    """Reads a queue with pika, declaring it exactly as the notifier does (durable, no arguments)."""

    def __init__(self, vhost: RabbitVhost, queue: str, port: int = AMQP_PORT, host: str = "127.0.0.1"):
        self.queue = queue
        self._connection = pika.BlockingConnection(
            pika.ConnectionParameters(host, port, vhost.name, pika.PlainCredentials("guest", "guest"))
        )
        self._channel = self._connection.channel()

    def declare(self, queue: str | None = None) -> tuple[int, int]:
        """Declare the queue durable with no arguments, as the notifier (and Celery, for its own) does.

        Returns (ready messages, consumers). RabbitMQ refuses a declaration that
        differs from the queue's (406 PRECONDITION_FAILED), so this passing
        means the two declarations agree.
        """
        frame = self._channel.queue_declare(queue or self.queue, durable=True)
        return frame.method.message_count, frame.method.consumer_count

    def consumers(self, queue: str) -> int:
        return self._channel.queue_declare(queue, passive=True).method.consumer_count

    def purge(self, queue: str | None = None) -> None:
        self._channel.queue_purge(queue or self.queue)

    def delete(self) -> None:
        self._channel.queue_delete(self.queue)

    def drain(self) -> list[Delivery]:
        """Take every message ready in the queue now, in queue order."""
        deliveries: list[Delivery] = []
        while True:
            method, properties, body = self._channel.basic_get(self.queue, auto_ack=True)
            if method is None:
                return deliveries
            deliveries.append(Delivery(properties, body))

    def wait_for(self, count: int, timeout: float) -> list[Delivery]:
        """Read until `count` messages have arrived; fail after `timeout` seconds."""
        deliveries: list[Delivery] = []

        def enough():
            deliveries.extend(self.drain())
            return len(deliveries) >= count

        try:
            wait_until(enough, timeout, interval=0.05, what=f"{count} messages on {self.queue}")
        except TimeoutError as exc:
            ids = [d.properties.message_id for d in deliveries]
            raise TimeoutError(f"{exc}; got {len(ids)}, first ids {ids[:20]}") from None
        return deliveries

    def close(self) -> None:
        if self._connection.is_open:
            self._connection.close()


class CeleryWorker:
    """A real `celery -A messenger worker` process (optionally with embedded beat) with its own environment."""

    def __init__(self, env: dict[str, str], log_dir: Path, beat: bool = False, name: str = "worker"):
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "APP_ENV": "test", **env}
        self.log_path = log_dir / f"{name}.log"
        self.beat = beat
        self.name = name
        self.process: subprocess.Popen | None = None
        self._log_start = 0

    def start(self, timeout: float = 30) -> CeleryWorker:
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "messenger",
            "worker",
            "--loglevel",
            "INFO",
            "--concurrency",
            "1",
            "--hostname",
            f"{self.name}-{uuid.uuid4().hex[:6]}@%h",
            "--without-gossip",
            "--without-mingle",
        ]
        if self.beat:
            command.append("--beat")
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_until(self._ready, timeout, what=f"celery worker {self.name} ready")
        return self

    def _ready(self) -> bool:
        assert self.process is not None, "start() first"
        if self.process.poll() is not None:
            raise RuntimeError(f"celery worker exited {self.process.returncode}: {self.log()[-3000:]}")
        return " ready." in self.log()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[self._log_start :] if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once, as a crash would."""
        self.stop(signal.SIGKILL)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if self.process is None:
            return
        stop_process_group(self.process, sig, timeout)
        group = self.process.pid

        def group_gone() -> bool:
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                return True
            return False

        # Pool children can outlive the main process by a moment after SIGKILL.
        wait_until(group_gone, 5, interval=0.05, what=f"celery worker {self.name}'s pool processes to exit")
