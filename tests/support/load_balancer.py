"""The load balancer's system tests: a whole local topology, a client loop, and nginx.ctmpl expanded.

`Topology` runs what an operator runs, with the project's own scripts in the
local runtime: a real Consul agent, service instances started by
infrastructure/messenger-deploy.sh on a PostgreSQL database of their own, and
the load balancer started by infrastructure/messenger-load-balancer-deploy.sh
(upstream_watcher.py and a real NGINX) on a free loopback port.

`ClientLoop` is the steady load of the drills: a few threads sending requests
through the load balancer, each on a new connection, bounded in count and time.

`expand_ctmpl` expands the few Go-template constructs nginx.ctmpl uses, so a
test can check that the consul-template path renders what the local path does
(consul-template itself is in no registry these machines reach).
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import re
import signal
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from tests.support.infrastructure import (  # noqa: F401 (INFRA re-exported)
    INFRA,
    Infrastructure,
    fresh_database,
    migrated_database,
)
from tests.support.platform import PLATFORM
from tests.support.processes import REPO_ROOT, ConsulAgent, free_port, free_ports, http_get, wait_until
from tests.support.service import manage

LB_DIR = REPO_ROOT / "load-balancer"


def watcher_module():
    """load-balancer/upstream_watcher.py as a module (its folder is not a package)."""
    spec = importlib.util.spec_from_file_location("upstream_watcher", LB_DIR / "upstream_watcher.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def nginx_in_front_of(port: int, state_dir: Path):
    """The project's NGINX (its nginx.conf and server block, as the watcher runs it) on a free port,
    with the one instance on `port` as its whole upstream list; stopped on exit."""
    watcher = watcher_module()
    nginx = watcher.Nginx(state_dir, "nginx")
    nginx.port = free_port()
    nginx.prepare(f"127.0.0.1:{nginx.port}")
    assert nginx.apply(watcher.render_upstream("messenger", [("127.0.0.1", port)])) == "started"
    try:
        yield nginx
    finally:
        nginx.quit(timeout=10)


# --- the consul-template path, expanded -------------------------------------------

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.DOTALL)


def expand_ctmpl(template: str, services: dict[str, list[dict]]) -> str:
    """Expand nginx.ctmpl's constructs as Go's text/template does.

    Supported: comments, whitespace trimming (`{{-`, `-}}`), `range service "X"`
    with `else` and `end`, `.Address`, `.Port`, `or .ServiceMeta.live_port .Port`
    and `len (service "X")`. Any
    other action fails the test, so a template change that this expander does
    not understand cannot pass unnoticed.
    """
    tokens: list[tuple[str, str]] = []
    position = 0
    trim_next = False
    for match in _ACTION.finditer(template):
        text = template[position : match.start()]
        if trim_next:
            text = text.lstrip()
        if match.group(1):
            text = text.rstrip()
        tokens.append(("text", text))
        tokens.append(("action", match.group(2)))
        trim_next = bool(match.group(3))
        position = match.end()
    tail = template[position:]
    tokens.append(("text", tail.lstrip() if trim_next else tail))

    def lookup(expression: str) -> list[dict]:
        found = re.fullmatch(r'service "([^"|]+)(?:\|passing)?"', expression)
        assert found, f"unsupported service call: {expression}"
        return services.get(found.group(1), [])

    def render(start: int, dot: dict | None, stop_at: tuple[str, ...]) -> tuple[str, int]:
        out = []
        i = start
        while i < len(tokens):
            kind, value = tokens[i]
            if kind == "text":
                out.append(value)
            elif value in stop_at:
                return "".join(out), i
            elif value.startswith("/*"):
                pass
            elif value.startswith("range "):
                items = lookup(value[len("range ") :])
                body_end = _matching(tokens, i + 1)
                else_at = next(
                    (
                        j
                        for j in range(i + 1, body_end)
                        if tokens[j] == ("action", "else") and _depth(tokens, i + 1, j) == 0
                    ),
                    None,
                )
                if items:
                    for item in items:
                        out.append(render(i + 1, item, ("else", "end"))[0])
                elif else_at is not None:
                    out.append(render(else_at + 1, dot, ("end",))[0])
                i = body_end
            elif value in (".Address", ".Port"):
                assert dot is not None, f"{value} outside range"
                out.append(str(dot[value[1:]]))
            elif value == "or .ServiceMeta.live_port .Port":
                assert dot is not None, f"{value} outside range"
                out.append(str((dot.get("ServiceMeta") or {}).get("live_port") or dot["Port"]))
            elif value.startswith("len (") and value.endswith(")"):
                out.append(str(len(lookup(value[len("len (") : -1]))))
            else:
                raise AssertionError(f"expand_ctmpl does not know the action {{{{ {value} }}}}")
            i += 1
        return "".join(out), i

    return render(0, None, ())[0]


def _depth(tokens, start: int, stop: int) -> int:
    depth = 0
    for kind, value in tokens[start:stop]:
        if kind == "action" and value.startswith(("range ", "if ")):
            depth += 1
        elif kind == "action" and value == "end":
            depth -= 1
    return depth


def _matching(tokens, start: int) -> int:
    """Index of the `end` closing the block opened just before `start`."""
    depth = 0
    for j in range(start, len(tokens)):
        kind, value = tokens[j]
        if kind == "action" and value.startswith(("range ", "if ")):
            depth += 1
        elif kind == "action" and value == "end":
            if depth == 0:
                return j
            depth -= 1
    raise AssertionError("unclosed block in template")


# --- the whole topology, local runtime -----------------------------------------------


class ThroughLoadBalancer:
    """Whatever answers on 127.0.0.1:`lb_port` behind the load balancer: a test topology or a whole stack."""

    lb_port: int
    # Where the instances register, for `instance_of`; None: upstream addresses are taken as they are.
    consul_url: str | None = None

    def instance_of(self, upstream: str | None) -> str | None:
        """The instance (its address:port as Consul has it) behind an `Upstream-Host` ($upstream_addr): its own
        port, or its live listener's port, where NGINX sends the plain reads (each of several addresses NGINX
        tried, comma-separated). An address Consul does not name (an upstream group, an instance gone before
        it was seen, any while Consul does not answer) is left as it is. Consul is asked at most once a
        second, briefly: the client loops call this for every answer, and a host-loss drill can take the
        agent they ask away for a while."""
        if upstream is None or self.consul_url is None:
            return upstream
        known: dict[str, str] = self.__dict__.setdefault("_instance_by_address", {})
        parts = upstream.split(", ")
        with self._instances_lock():
            asked = self.__dict__.get("_instances_asked_at", 0.0)
            if any(part not in known for part in parts) and time.monotonic() - asked >= 1.0:
                self.__dict__["_instances_asked_at"] = time.monotonic()
                known.update(self._instances_by_address())
        return ", ".join(known.get(part, part) for part in parts)

    def remember_instances(self) -> None:
        """Read Consul's catalog into `instance_of`'s mapping now: before a drill takes Consul away, so that
        the answers of an instance first seen during the outage are still named by their instance."""
        if self.consul_url is not None:
            with self._instances_lock():
                self.__dict__["_instances_asked_at"] = time.monotonic()
                self.__dict__.setdefault("_instance_by_address", {}).update(self._instances_by_address())

    def _instances_lock(self) -> threading.Lock:
        return self.__dict__.setdefault("_instance_lock", threading.Lock())

    def _instances_by_address(self) -> dict[str, str]:
        """Every address Consul's catalog names for an instance (its port, its live port) -> the instance."""
        try:
            status, body, _ = http_get(f"{self.consul_url}/v1/catalog/service/messenger", timeout=1)
        except OSError:
            return {}
        found = {}
        for entry in json.loads(body) if status == 200 else []:
            instance = f"{entry['ServiceAddress']}:{entry['ServicePort']}"
            found[instance] = instance
            live_port = (entry.get("ServiceMeta") or {}).get("live_port")
            if live_port:
                found[f"{entry['ServiceAddress']}:{live_port}"] = instance
        return found

    def request(
        self, method: str, path: str, body: dict | bytes | None = None, headers: dict | None = None, timeout: float = 15
    ) -> tuple[int, bytes, dict]:
        """One request through the load balancer on a new connection: (status, body, headers). A dict body is
        sent as JSON, bytes as they are."""
        conn = http.client.HTTPConnection("127.0.0.1", self.lb_port, timeout=timeout)
        try:
            conn.request(
                method,
                path,
                body=body if body is None or isinstance(body, bytes) else json.dumps(body),
                headers={"Content-Type": "application/json", **(headers or {})},
            )
            response = conn.getresponse()
            return response.status, response.read(), dict(response.headers)
        finally:
            conn.close()


class Topology(ThroughLoadBalancer):
    """Consul, instances from messenger-deploy.sh, and the load balancer from its deploy script."""

    # Short discovery timings so drills take seconds, not minutes. The drain is
    # what a graceful stop relies on: the instance keeps serving this long
    # after it deregistered, while the load balancer drops it.
    TIMINGS = {"CONSUL_CHECK_INTERVAL": "1s", "CONSUL_RETRY_INTERVAL": "1s", "SHUTDOWN_DRAIN_SECONDS": "2"}

    def __init__(self, state_dir: Path, database: str):
        self.state_dir = state_dir
        self.database = database
        self.consul = ConsulAgent()
        self.infra = Infrastructure(self.consul, state_dir, database, **self.TIMINGS)
        self.lb_port, self.closed_port = free_ports(2, exclude=(self.consul.http_port,))
        self.consul_url = self.consul.url
        # The broker is deliberately absent (amqp-port names a closed loopback
        # port): events wait in each message's outbox row, and these tests leave
        # nothing in the machine's shared RabbitMQ. The events have their own tests.

    # -- lifecycle
    def start(self) -> Topology:
        self.consul.start()
        self.write_kv()
        migrated_database(fresh_database(self.database))
        seeded = manage("seed", env={"PGHOST": "127.0.0.1", "PGUSER": "postgres", "PGDATABASE": self.database})
        assert seeded.returncode == 0, seeded.stdout + seeded.stderr
        self.deploy_load_balancer()
        return self

    def stop(self) -> None:
        self.infra.run("messenger-load-balancer-stop.sh", check=False)
        self.infra.cleanup()
        # NGINX outlives a watcher killed by a failed test: stop it by its pid file.
        pidfile = self.nginx_dir / "nginx.pid"
        if pidfile.exists() and alive(pid := int(pidfile.read_text())):
            os.kill(pid, signal.SIGKILL)
        self.consul.cleanup()

    def write_kv(self) -> None:
        """The keys messenger-deploy.sh reads (a dev-mode agent forgets them when it restarts)."""
        for key, value in {
            PLATFORM["KV_DB_HOST"]: "127.0.0.1",
            PLATFORM["KV_DB_PORT"]: "5432",
            PLATFORM["KV_DB_APPLICATION_USER"]: "postgres",
            PLATFORM["KV_DB_APPLICATION_PASSWORD"]: "postgres",
            PLATFORM["KV_AMQP_HOST"]: "127.0.0.1",
            PLATFORM["KV_AMQP_PORT"]: str(self.closed_port),
        }.items():
            self.consul.kv_put(key, value)

    def deploy_load_balancer(self) -> None:
        self.infra.run("messenger-load-balancer-deploy.sh", LB_PORT=str(self.lb_port), LB_BIND="127.0.0.1")

    # -- instances
    def deploy_instance(self) -> str:
        """One more instance; returns its id (`messenger-PORT`)."""
        return self.infra.deploy()

    def stop_instance(self, *instance_ids: str) -> None:
        """Graceful: deregister, drain, finish in-flight requests, exit (blocks until done)."""
        self.infra.run("messenger-stop.sh", *(instance_ids or ("--all",)))

    def kill_instance(self, instance_id: str) -> None:
        """SIGKILL the instance's whole process group (master and workers), as a crash would."""
        os.killpg(self.infra.pid(instance_id), signal.SIGKILL)

    @staticmethod
    def address(instance_id: str) -> str:
        return f"127.0.0.1:{Infrastructure.port(instance_id)}"

    def running_instances(self) -> list[str]:
        return sorted(p.stem for p in (self.state_dir / "messenger").glob("*.pid") if alive(int(p.read_text())))

    def passing_addresses(self) -> set[str]:
        return {f"{s['Address']}:{s['Port']}" for s in self.infra.passing().values()}

    def ensure_instances(self, count: int, timeout: float = 60) -> list[str]:
        """Exactly `count` running, passing instances, all behind the load balancer."""
        running = self.running_instances()
        if len(running) > count:
            self.stop_instance(*running[count:])
            running = running[:count]
        while len(running) < count:
            running.append(self.deploy_instance())
        self.wait_routed({self.address(i) for i in running}, timeout)
        return running

    # -- the load balancer
    @property
    def lb_url(self) -> str:
        return f"http://127.0.0.1:{self.lb_port}"

    @property
    def nginx_dir(self) -> Path:
        return self.state_dir / "load-balancer" / "nginx"

    def watcher_status(self) -> dict:
        return json.loads((self.nginx_dir / "status.json").read_text())

    def nginx_log(self, name: str) -> Path:
        """NGINX's `access` or `error` log, as the watcher runs it (nginx.conf's logs/ under its prefix)."""
        return self.nginx_dir / "logs" / f"{name}.log"

    def nginx_master_pid(self) -> int:
        return int((self.nginx_dir / "nginx.pid").read_text())

    def watcher_pid(self) -> int:
        """The watcher's pid, as supervisord's program recorded it and as the watcher itself reports it."""
        pid = self.infra.pid("messenger-lb", kind="load-balancer")
        assert self.watcher_status()["pid"] == pid
        return pid

    def wait_watcher_replaced(self, dead_pid: int, timeout: float = 30) -> int:
        """Until a new watcher runs in place of `dead_pid`, started by supervisord, and has saved its status."""
        return wait_until(
            lambda: (
                (pid := self.infra.pid("messenger-lb", kind="load-balancer")) != dead_pid
                and alive(pid)
                and self.watcher_status()["pid"] == pid
                and pid
            ),
            timeout,
            interval=0.05,
            what="the watcher started again by supervisord",
        )

    def wait_routed(self, addresses: set[str], timeout: float = 30) -> None:
        """Until the load balancer's upstream list is exactly `addresses`."""
        try:
            wait_until(
                lambda: set(self.watcher_status()["instances"]) == addresses,
                timeout,
                interval=0.05,
                what=f"the load balancer to route to {sorted(addresses)}",
            )
        except TimeoutError as exc:
            raise AssertionError(
                f"{exc}\nwatcher status: {self.watcher_status()}\nwatcher log (tail):\n{self.watcher_log()[-3000:]}"
            ) from None

    def watcher_log(self) -> str:
        return (self.state_dir / "load-balancer" / "messenger-lb.log").read_text()

    def get(self, path: str, headers: dict | None = None) -> tuple[int, bytes, dict]:
        return http_get(f"{self.lb_url}{path}", headers=headers)

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Rows from the instances' own database (not pytest's)."""
        with psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname=self.database) as conn:
            return conn.execute(sql, params).fetchall()


def alive(pid: int) -> bool:
    """The process runs (a killed one whose parent has not reaped it yet is a zombie: not alive)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# --- steady load ------------------------------------------------------------------------


@dataclass
class Outcome:
    method: str
    started: float  # time.monotonic()
    ended: float
    status: int | None  # None: no HTTP answer at all (connection error, timeout)
    upstream: str | None  # the instance that answered (ThroughLoadBalancer.instance_of), or the upstream group
    content: str | None = None  # a POSTed message's unique content
    error: str | None = None
    replayed: bool = False  # the answer to a retried post that an earlier attempt had stored (Idempotent-Replayed)

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


# How long an idempotent client waits before it sends an unanswered post again.
RETRY_PAUSE = 0.2


class ClientLoop:
    """Threads sending requests through the load balancer until stopped, bounded in count and time.

    Every `post_every`-th request of a thread POSTs a message with unique content
    (so the database can say whether any was stored twice); the others GET the
    conversation's messages. Each request opens its own connection.

    `idempotent`: each post carries an `Idempotency-Key`, and a post that gets no
    2xx is sent again, same key and content, as a careful client does (every
    attempt is an outcome of its own), until it is answered or the loop ends.
    """

    def __init__(
        self,
        topology: ThroughLoadBalancer,
        conversation_id: int,
        user_id: int,
        threads: int = 6,
        max_requests: int = 6000,
        max_seconds: float = 60,
        post_every: int = 3,
        idempotent: bool = False,
    ):
        self.topology = topology
        self.idempotent = idempotent
        self.path = f"/conversations/{conversation_id}/messages"
        self.user_id = user_id
        self.threads = threads
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.post_every = post_every
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def _one(self, post: bool, content: str | None) -> Outcome:
        method = "POST" if post else "GET"
        started = time.monotonic()
        headers = {"User-Id": str(self.user_id)}
        if post and self.idempotent:
            headers["Idempotency-Key"] = str(content)
        try:
            status, _, answer = self.topology.request(
                method,
                self.path if post else f"{self.path}?limit=5",
                body={"content": content} if post else None,
                headers=headers,
            )
            return Outcome(
                method,
                started,
                time.monotonic(),
                status,
                self.topology.instance_of(answer.get("Upstream-Host")),
                content,
                replayed=answer.get("Idempotent-Replayed") == "true",
            )
        except (OSError, http.client.HTTPException) as exc:
            return Outcome(method, started, time.monotonic(), None, None, content, repr(exc))

    def _run(self, worker: int) -> None:
        deadline = time.monotonic() + self.max_seconds
        n = worker
        retry: str | None = None  # the content of a post to send again
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                if len(self.outcomes) >= self.max_requests:
                    return
            post = retry is not None or n % self.post_every == 0
            content = retry or (f"lb-drill-{uuid.uuid4().hex}" if post else None)
            outcome = self._one(post, content)
            with self._lock:
                self.outcomes.append(outcome)
            retry = content if post and self.idempotent and not outcome.ok else None
            if retry is None:
                n += 1
            else:
                self._stop.wait(RETRY_PAUSE)  # a client's back-off before it sends the post again

    def __enter__(self) -> ClientLoop:
        for worker in range(self.threads):
            thread = threading.Thread(target=self._run, args=(worker,), daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(timeout=30)

    def failures(self) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if not o.ok]

    def count(self) -> int:
        with self._lock:
            return len(self.outcomes)

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)
