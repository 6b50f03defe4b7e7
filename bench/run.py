"""`make bench`: every scenario against the running stack, pgbench in the same run, one table.

Usage: python bench/run.py [--url http://127.0.0.1:8085] [--duration 15] [--connections 64] [--direct-rounds 2]
                          [--relay-wait 180]

Every request a chat client would send a User-Id on carries one (the tutorial's
anonymous page read is a scenario of its own). Each read route runs beside
pgbench executing the route's own statement (read from the code, with
`-M prepared` as the service prepares it) at the same concurrency: the
database's ceiling for that route. A mixed chat workload has many users poll
the tail of their conversation and post now and then. Members-only reads need
an instance configured for them, so the bench starts two single instances of
its own beside the stack, direct (no load balancer), one with open reads and
one with READS_REQUIRE_MEMBER, and alternates the same page read between them
(A B A B), with each one's CPU per request.

The database is reached with the libpq variables (PGHOST, PGPORT, PGUSER,
PGPASSWORD, PGDATABASE; defaults: the local stack's database as `make up`
creates it). Ratios compare scenarios measured in this same run, because
absolute figures on a shared 2-core machine move from run to run.

Besides the table it prints the CPU each part of the stack spent per request in
each scenario (which is steadier than requests/s on a shared machine, and says
where a scenario's time goes) and memory: PSS per serving instance (its
processes' share of the pages they hold, with their summed RSS beside it), and
the whole stack as PSS (shared pages counted once). Only this stack's processes are
counted: instances (each one's WSGI server and live listener, their masters and
workers) and worker by the database they serve, PostgreSQL's backends
of that database and its own processes, the load balancer's NGINX under
MESSENGER_STATE_DIR, the Consul agent on CONSUL_PORT, RabbitMQ. Before the read
scenarios it waits for the worker to relay the posts' events, and says how long
that took, so the relay's work is not counted against the reads.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict as parse_conninfo

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

import dataset as bench_dataset  # noqa: E402

# Targets from the performance issue, checked against this run's figures.
RELAY_WAIT_LIMIT = 180.0  # seconds the reads wait for the worker to relay the posts' events
REFERENCE_BEST_HOT_RPS = 200  # the reference service at its best (8 clients), measured the same way
STACK_CPU_MS_TARGET = 2.0  # CPU per request summed over every part of the stack, for every route
STACK_PSS_MIB_TARGET = 800  # the whole stack's memory (PSS: shared pages counted once)
INSTANCE_PSS_MIB_TARGET = 150  # one serving instance under load: its processes' PSS, summed
TARGETS = {
    "post_hot": "≥1.0x pgbench hot@64, ≥2.5x reference (500 rps), 0 errors, p99 < 250 ms",
    "post_spread": "≥1,000 rps and ≥35% of pgbench spread@64",
    "get_page_big": "within 1.2x of the 100-message page",
    "members_only": "members-only page reads within 10% of open ones (direct instances, same run)",
    "reads": "each read ≥1.0x the reference per process, no more CPU per request (measured side by side: bench/reference.py)",
    "stack_cpu": f"every route ≤ {STACK_CPU_MS_TARGET} ms of CPU per request summed over the whole stack",
    "memory": f"one serving instance < {INSTANCE_PSS_MIB_TARGET} MiB PSS under load and at the end, whole stack < {STACK_PSS_MIB_TARGET} MiB PSS",
}
# The mixed chat workload: one request in CHAT_POST_EVERY is a post, the rest poll the tail.
# A chat client polls every few seconds while open and its user sends a message
# every half minute or so while chatting: about nine reads to one write.
CHAT_POST_EVERY = 10
DIRECT_CONNECTIONS = 16  # the direct instances' page reads: one process's worth of concurrency


def missed_targets(
    *,
    hot: dict,
    pg_hot: dict,
    spread: dict,
    pg_spread: dict,
    small: dict,
    big: dict,
    members_ratio: float,
    instance_pss_mib: list[float],
    stack_pss_mib: float,
    stack_cpu_ms: dict[str, float],
) -> list[str]:
    """The TARGETS this run's figures miss, each with the figure that misses it (empty: all met).

    `reads` compares with the reference service, which bench/reference.py measures
    beside one instance of ours, so it is not checked here.
    """
    missed = []
    p99 = hot["p99_ms"]
    if (
        hot["rps"] < pg_hot["rps"]
        or hot["rps"] < 2.5 * REFERENCE_BEST_HOT_RPS
        or hot["errors"]
        or not p99 < 250  # a NaN p99 (no latency figures) is a miss too
    ):
        missed.append(
            f"post_hot: {hot['rps']:.0f} rps ({hot['rps'] / max(pg_hot['rps'], 1e-9):.2f}x pgbench, "
            f"{hot['rps'] / REFERENCE_BEST_HOT_RPS:.1f}x reference), {hot['errors']} errors, p99 {p99:.1f} ms"
        )
    if spread["rps"] < 1000 or spread["rps"] < 0.35 * pg_spread["rps"]:
        missed.append(
            f"post_spread: {spread['rps']:.0f} rps, {spread['rps'] / max(pg_spread['rps'], 1e-9):.0%} of pgbench"
        )
    if big["rps"] * 1.2 < small["rps"]:
        missed.append(f"get_page_big: {small['rps'] / max(big['rps'], 1e-9):.2f}x slower than the 100-message page")
    if members_ratio < 0.9:
        missed.append(f"members_only: {members_ratio:.2f}x the open reads' rate")
    over = {name: ms for name, ms in stack_cpu_ms.items() if not ms <= STACK_CPU_MS_TARGET}
    if over:
        missed.append("stack_cpu: " + ", ".join(f"{name} {ms:.2f} ms" for name, ms in over.items()))
    if not all(pss < INSTANCE_PSS_MIB_TARGET for pss in instance_pss_mib) or not stack_pss_mib < STACK_PSS_MIB_TARGET:
        missed.append(
            "memory: instances' PSS "
            + ", ".join(f"{pss:.0f}" for pss in instance_pss_mib)
            + f" MiB, whole stack {stack_pss_mib:.0f} MiB PSS"
        )
    return missed


def conninfo() -> str:
    env = os.environ
    parts = {
        "host": env.get("PGHOST", "127.0.0.1"),
        "port": env.get("PGPORT", "5432"),
        "user": env.get("PGUSER", "postgres"),
        "dbname": env.get("PGDATABASE", "messenger"),
    }
    if env.get("PGPASSWORD"):
        parts["password"] = env["PGPASSWORD"]
    return " ".join(f"{key}={value}" for key, value in parts.items())


def wrk(url: str, script: str, connections: int, duration: int, env: dict[str, str]) -> dict:
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration}s",
        "--timeout",
        "5s",
        "-s",
        str(BENCH_DIR / "wrk" / script),
        url,
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=duration + 60,
        env={**os.environ, "BENCH_DIR": str(BENCH_DIR), **env},
    )
    match = re.search(r"^WRK_JSON (.*)$", result.stdout, re.MULTILINE)
    if not match:
        raise RuntimeError(f"wrk printed no result:\n{result.stdout}\n{result.stderr}")
    figures = json.loads(match.group(1))
    figures["errors"] = sum(figures[k] for k in figures if k.startswith("errors_"))
    return figures


def pgbench(script: Path, clients: int, duration: int, variables: dict[str, int | str], mode: str = "simple") -> dict:
    env = os.environ
    command = [
        "pgbench",
        "-n",
        "-M",
        mode,
        "-f",
        str(script),
        "-c",
        str(clients),
        "-j",
        "2",
        "-T",
        str(duration),
        "-h",
        env.get("PGHOST", "127.0.0.1"),
        "-p",
        env.get("PGPORT", "5432"),
        "-U",
        env.get("PGUSER", "postgres"),
    ]
    for name, value in variables.items():
        command += ["-D", f"{name}={value}"]
    command.append(env.get("PGDATABASE", "messenger"))
    result = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60)
    if result.returncode != 0:
        raise RuntimeError(f"pgbench failed:\n{result.stdout}\n{result.stderr}")
    tps = float(re.search(r"tps = ([\d.]+)", result.stdout).group(1))
    latency = float(re.search(r"latency average = ([\d.]+) ms", result.stdout).group(1))
    failed = re.search(r"number of failed transactions: (\d+)", result.stdout)
    processed = re.search(r"number of transactions actually processed: (\d+)", result.stdout)
    return {
        "rps": tps,
        "p50_ms": latency,
        "p99_ms": float("nan"),
        "errors": int(failed.group(1)) if failed else 0,
        "requests": int(processed.group(1)) if processed else 0,
        "note": "latency is pgbench's average",
    }


def service_statements(info: str) -> dict[str, str]:
    """The read routes' own statements, from the code that runs them (one declaration each).

    Importing them needs Django's settings, which need to know the database is
    PostgreSQL; nothing connects.
    """
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "messenger.settings")
    os.environ.setdefault("PGHOST", parse_conninfo(info).get("host", "127.0.0.1"))
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from conversations import selectors

    return {"messages page": selectors.MESSAGES_PAGE_SQL, "conversations page": selectors.CONVERSATIONS_PAGE_SQL}


def pgbench_script(folder: Path, name: str, sql: str) -> Path:
    """A statement written for psycopg (`%(name)s`) as a pgbench script (`:name`)."""
    script = folder / (re.sub(r"\W+", "_", name) + ".sql")
    script.write_text(re.sub(r"%\((\w+)\)s", r":\1", sql).strip() + ";\n")
    return script


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class DirectInstance:
    """One serving instance of this tree, started by the bench beside the stack: gunicorn, no load balancer."""

    def __init__(self, name: str, info: str, extra_env: dict[str, str], log_folder: Path, root: Path = ROOT):
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Its live listener, where NGINX sends the plain reads of a page and of the list (conversations/live/reads.py).
        self.live_port = free_port()
        self.reads_url = f"http://127.0.0.1:{self.live_port}"
        parts = parse_conninfo(info)
        env = {
            **os.environ,
            "APP_ENV": "production",
            "BIND_HOST": "127.0.0.1",
            "PORT": str(self.port),
            "LIVE_PORT": str(self.live_port),
            "PGHOST": parts.get("host", "127.0.0.1"),
            "PGPORT": parts.get("port", "5432"),
            "PGUSER": parts.get("user", "postgres"),
            "PGDATABASE": parts["dbname"],
            **extra_env,
        }
        for name_unset in ("CONSUL_SERVICE_NAME", "AMQPHOST", "PROMETHEUS_MULTIPROC_DIR"):
            env.pop(name_unset, None)  # reads only: no registration, no broker, metrics of its own
        if parts.get("password"):
            env["PGPASSWORD"] = parts["password"]
        self.log = open(log_folder / f"{name}.log", "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "messenger/gunicorn_conf.py", "messenger.wsgi"],
            cwd=root,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_healthy(self, limit: float = 30.0) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"direct instance {self.name} exited; see {self.log.name}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    healthy = response.status == 200
                with urllib.request.urlopen(f"{self.reads_url}/health", timeout=2) as response:
                    if healthy and response.status == 200:  # the live listener starts once the instance is ready
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"direct instance {self.name} not healthy within {limit}s")

    def cpu_seconds(self) -> float:
        """User + system CPU of the instance's whole process tree: the gunicorn master, its workers, its live
        listener's master and worker."""
        stats = {}
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                fields = _read(proc / "stat").rsplit(")", 1)[-1].split()
                if len(fields) > 12:
                    stats[int(proc.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
        tree, total = {self.process.pid}, 0.0
        for _ in range(3):  # master, workers and live master, live worker
            tree |= {pid for pid, (parent, _) in stats.items() if parent in tree}
        for pid in tree:
            total += stats.get(pid, (0, 0.0))[1]
        return total

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
COMPONENTS = ("instances", "worker", "postgresql", "load balancer", "consul", "rabbitmq")


@dataclass
class Process:
    pid: int
    parent: int
    cmdline: str
    component: str | None = None


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def _postgres_database(cmdline: str) -> str | None:
    """The database a PostgreSQL backend (`postgres: 15/main: user db host(port) state`) or autovacuum worker works on.

    None for the server's own processes (checkpointer, WAL writer, ...), which serve every database.
    """
    words = cmdline.split(":", 2)[-1].split()
    if words[:2] == ["autovacuum", "worker"]:
        return words[2] if len(words) > 2 else None
    if len(words) >= 3 and (words[2].startswith("[local]") or "(" in words[2] or re.match(r"^[\d.:]+$", words[2])):
        return words[1]
    return None


class Stack:
    """This stack's processes by component, for CPU and memory figures."""

    def __init__(self, database: str):
        self.database = database
        self.state_dir = os.environ.get("MESSENGER_STATE_DIR", str(BENCH_DIR.parent / ".state"))
        self.consul_port = os.environ.get("CONSUL_PORT", "8500")

    def processes(self) -> list[Process]:
        found = {}
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                status = _read(proc / "status")
                parent = re.search(r"^PPid:\s+(\d+)", status, re.MULTILINE)
                cmdline = _read(proc / "cmdline").replace("\0", " ").strip()
                if parent and cmdline:
                    found[int(proc.name)] = Process(int(proc.name), int(parent.group(1)), cmdline)
        for process in found.values():
            process.component = self._component(process)
        for process in found.values():  # NGINX's workers belong to the stack's NGINX master
            if process.component is None and process.cmdline.startswith("nginx: worker"):
                master = found.get(process.parent)
                if master is not None and master.component == "load balancer":
                    process.component = "load balancer"
        return [process for process in found.values() if process.component]

    def _component(self, process: Process) -> str | None:
        cmdline = process.cmdline
        # An instance is two gunicorn servers: the WSGI one and the live listener its master forks, which carries
        # the master's command line.
        if "gunicorn" in cmdline and "messenger.wsgi" in cmdline:
            return "instances" if _environ(process.pid).get("PGDATABASE") == self.database else None
        if "celery" in cmdline and "messenger" in cmdline:
            return "worker" if _environ(process.pid).get("PGDATABASE") == self.database else None
        if cmdline.startswith("postgres"):
            database = _postgres_database(cmdline)
            return "postgresql" if database in (None, self.database) else None
        if f"{self.state_dir}/load-balancer/nginx" in cmdline and (
            cmdline.startswith("nginx: master") or "upstream_watcher" in cmdline
        ):
            return "load balancer"
        if cmdline.startswith("consul agent") and f"-http-port {self.consul_port}" in cmdline:
            return "consul"
        if re.search(r"beam\.smp|epmd|erl_child_setup|inet_gethost", cmdline):
            return "rabbitmq"
        return None

    def cpu_seconds(self) -> dict[int, tuple[str, float]]:
        """CPU time used so far (user + system) by each of the stack's processes."""
        times = {}
        for process in self.processes():
            fields = _read(Path(f"/proc/{process.pid}/stat")).rsplit(")", 1)[-1].split()
            if len(fields) > 12:
                times[process.pid] = (process.component, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
        return times

    def memory_mib(self) -> tuple[list[tuple[float, float]], dict[str, float]]:
        """(PSS, RSS) of each serving instance, summed over its processes, and PSS by component.

        An instance is a process tree that shares most of its pages (the WSGI master's workers and its live
        listener are forked from it): its PSS, which divides each shared page among its sharers, is the memory
        it holds; its summed RSS counts a shared page once per process, so it is shown, not judged."""
        processes = self.processes()
        serving = {p.pid: p for p in processes if p.component == "instances"}
        instance_of = {}
        for process in serving.values():
            root = process  # the WSGI master: its workers, its live listener's master and worker are below it
            while root.parent in serving:
                root = serving[root.parent]
            instance_of[process.pid] = root.pid
        instances: dict[int, tuple[float, float]] = {}
        pss = {component: 0.0 for component in COMPONENTS}
        for process in processes:
            rollup = _read(Path(f"/proc/{process.pid}/smaps_rollup"))
            pss_kb = re.search(r"^Pss:\s+(\d+) kB", rollup, re.MULTILINE)
            process_pss = int(pss_kb.group(1)) / 1024 if pss_kb else 0.0
            pss[process.component] += process_pss
            if process.pid in instance_of:
                rss_kb = re.search(r"^VmRSS:\s+(\d+) kB", _read(Path(f"/proc/{process.pid}/status")), re.MULTILINE)
                process_rss = int(rss_kb.group(1)) / 1024 if rss_kb else 0.0
                key = instance_of[process.pid]
                held, summed = instances.get(key, (0.0, 0.0))
                instances[key] = (held + process_pss, summed + process_rss)
        return sorted(instances.values()), pss


def cpu_per_request(before: dict, after: dict, requests: int) -> dict[str, float]:
    """Milliseconds of CPU per request by component, over the processes alive at the end.

    A process started during the scenario (a database session opened anew, say)
    counts whole; one that ended during it is not seen.
    """
    spent = {component: 0.0 for component in COMPONENTS}
    for pid, (component, seconds) in after.items():
        spent[component] += seconds - (before[pid][1] if pid in before else 0.0)
    return {component: value * 1000 / max(requests, 1) for component, value in spent.items()}


def wait_for_relay(info: str, limit: float) -> tuple[int, float]:
    """Wait (at most `limit` s) until no event waits in the outbox; (events relayed meanwhile, seconds)."""
    started = time.monotonic()
    with psycopg.connect(info, autocommit=True) as conn:
        first = conn.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0]
        pending = first
        while pending and time.monotonic() - started < limit:
            time.sleep(0.5)
            pending = conn.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0]
    return first - pending, time.monotonic() - started


def chat_base(info: str, data) -> int:
    """The lowest last index among the chat conversations: where the mixed workload's polls start."""
    with psycopg.connect(info) as conn:
        return conn.execute(
            "SELECT min(last_index) FROM channels WHERE id BETWEEN %s AND %s",
            [data.chat_first, data.chat_first + bench_dataset.CHAT_CONVERSATIONS - 1],
        ).fetchone()[0]


def direct_reads(info: str, data, duration: int, rounds: int, log_folder: Path) -> list[tuple[str, str, list]]:
    """Open and members-only page reads on two direct instances, alternated A B A B: [(scenario, instance, rounds)]."""
    instances = [
        DirectInstance("open reads", info, {"READS_REQUIRE_MEMBER": "false"}, log_folder),
        DirectInstance("members only", info, {"READS_REQUIRE_MEMBER": "true"}, log_folder),
    ]
    scenarios = [
        (
            "GET page, 100 messages, User-Id of a participant",
            {"BENCH_PATH": f"/conversations/{data.small_conversation}/messages", "BENCH_USER": str(data.small_member)},
        )
    ]
    results = []
    try:
        for instance in instances:
            instance.wait_healthy()
        for name, env in scenarios:
            figures: dict[str, list] = {instance.name: [] for instance in instances}
            for round_number in range(rounds):
                for instance in instances:
                    print(
                        f"bench: direct, {instance.name}: {name}, round {round_number + 1} ({duration}s) ...",
                        flush=True,
                    )
                    before = instance.cpu_seconds()
                    result = wrk(instance.reads_url, "get_path.lua", DIRECT_CONNECTIONS, duration, env)
                    result["instance_cpu_ms"] = (instance.cpu_seconds() - before) * 1000 / max(result["requests"], 1)
                    figures[instance.name].append(result)
            results += [(name, instance, rows) for instance, rows in figures.items()]
    finally:
        for instance in instances:
            instance.stop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("BENCH_URL", "http://127.0.0.1:8085"))
    parser.add_argument("--duration", type=int, default=int(os.environ.get("BENCH_DURATION", "15")))
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--direct-rounds", type=int, default=2, help="A B rounds of the direct instances' reads")
    parser.add_argument(
        "--relay-wait",
        type=float,
        default=RELAY_WAIT_LIMIT,
        help="seconds the reads wait for the worker to relay the posts' events (0: no worker runs)",
    )
    args = parser.parse_args()

    for tool in ("wrk", "pgbench"):
        if not shutil.which(tool):
            print(f"bench: {tool} is not installed (make system-deps)", file=sys.stderr)
            return 2
    try:
        with urllib.request.urlopen(f"{args.url}/health", timeout=5) as response:
            assert response.status == 200
    except Exception as exc:  # noqa: BLE001 - any failure means "no stack to measure"
        print(f"bench: nothing healthy at {args.url} ({exc}); start the stack with `make up`", file=sys.stderr)
        return 2

    info = conninfo()
    started = time.monotonic()
    print("bench: preparing the data set (SQL) ...", flush=True)
    data = bench_dataset.ensure(info)
    print(f"bench: data set ready in {time.monotonic() - started:.1f}s: {json.dumps(data.as_dict())}", flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="messenger-bench-"))
    scripts = {name: pgbench_script(scratch, name, sql) for name, sql in service_statements(info).items()}

    duration, conns = args.duration, args.connections
    stack = Stack(parse_conninfo(info)["dbname"])
    rows: list[tuple[str, dict, dict]] = []
    memory_under_load: list[tuple[float, float]] = []

    def run(name: str, fn, *fn_args):
        print(f"bench: {name} ({duration}s) ...", flush=True)
        before = stack.cpu_seconds()
        figures = fn(*fn_args)
        figures["name"] = name
        rows.append((name, figures, cpu_per_request(before, stack.cpu_seconds(), figures["requests"])))
        return figures

    def get(name: str, path: str, user: int | None = None):
        env = {"BENCH_PATH": path}
        if user is not None:
            env["BENCH_USER"] = str(user)
        return run(name, wrk, args.url, "get_path.lua", conns, duration, env)

    def page_ceiling(name: str, conversation: int, after: int, user: int):
        return run(
            name,
            pgbench,
            scripts["messages page"],
            conns,
            duration,
            {"conversation": conversation, "after": after, "limit": 100, "user": user, "members_only": "false"},
            "prepared",
        )

    bare_post = BENCH_DIR / "pgbench" / "post_message.sql"
    pg_hot = run(
        "pgbench: post, hot conversation, 64 clients",
        pgbench,
        bare_post,
        conns,
        duration,
        {
            "first_conversation": data.pg_hot_conversation,
            "last_conversation": data.pg_hot_conversation,
            "user": data.pg_hot_user,
        },
    )
    hot = run(
        "POST message, hot conversation, 64 clients",
        wrk,
        args.url,
        "post_message_hot.lua",
        conns,
        duration,
        {"BENCH_CONVERSATION": str(data.hot_conversation), "BENCH_USER": str(data.hot_user)},
    )
    memory_under_load, _ = stack.memory_mib()
    pg_spread = run(
        "pgbench: post, 1,000 conversations, 64 clients",
        pgbench,
        bare_post,
        conns,
        duration,
        {
            "first_conversation": data.pg_spread_first,
            "last_conversation": data.pg_spread_last,
            "user": data.pg_hub_user,
        },
    )
    spread = run(
        "POST message, 1,000 conversations, 64 clients",
        wrk,
        args.url,
        "post_message_spread.lua",
        conns,
        duration,
        {
            "BENCH_SPREAD_FIRST": str(data.spread_first),
            "BENCH_SPREAD_LAST": str(data.spread_last),
            "BENCH_USER": str(data.hub_user),
        },
    )
    print("bench: waiting for the worker to relay the posts' events ...", flush=True)
    relayed, relay_seconds = wait_for_relay(info, args.relay_wait)

    small_path = f"/conversations/{data.small_conversation}/messages"
    big_path = f"/conversations/{data.big_conversation}/messages?after_index=50000"
    pg_small = page_ceiling(
        "pgbench: page statement, 100-message conversation", data.small_conversation, 0, data.small_member
    )
    small = get("GET page, 100-message conversation, User-Id", small_path, data.small_member)
    anonymous = get("GET page, 100-message conversation, anonymous (the tutorial's)", small_path)
    pg_big = page_ceiling(
        "pgbench: page statement, 100,000-message conversation", data.big_conversation, 50000, data.big_member
    )
    big = get("GET page, 100,000-message conversation, User-Id", big_path, data.big_member)
    pg_list = run(
        "pgbench: conversation list statement, user with 1,000",
        pgbench,
        scripts["conversations page"],
        conns,
        duration,
        {"user": data.hub_user, "after": 0, "limit": 100},
        "prepared",
    )
    listing = get("GET /conversations, user with 1,000, User-Id", "/conversations", data.hub_user)
    chat = run(
        f"mixed chat: {bench_dataset.CHAT_CONVERSATIONS} pairs poll the tail, 1 in {CHAT_POST_EVERY} posts",
        wrk,
        args.url,
        "chat_mixed.lua",
        conns,
        duration,
        {
            "BENCH_CHAT_FIRST": str(data.chat_first),
            "BENCH_CHAT_FIRST_USER": str(data.chat_first_user),
            "BENCH_CHAT_COUNT": str(bench_dataset.CHAT_CONVERSATIONS),
            "BENCH_CHAT_BASE": str(chat_base(info, data)),
            "BENCH_POST_EVERY": str(CHAT_POST_EVERY),
        },
    )
    get("GET /health", "/health")

    direct = direct_reads(info, data, duration, args.direct_rounds, scratch)
    # After every scenario: what the instances kept (their live listeners grow with the reads, which come
    # after the posts the under-load figure is taken in).
    memory_at_end, memory = stack.memory_mib()
    problems = bench_dataset.integrity_problems(info)

    print()
    print("| scenario | requests/s | p50 ms | p99 ms | errors | instances' CPU ms/request | ratio |")
    print("|---|---:|---:|---:|---:|---:|---|")
    ratios = {
        hot[
            "name"
        ]: f"{hot['rps'] / pg_hot['rps']:.2f}x pgbench hot, {hot['rps'] / REFERENCE_BEST_HOT_RPS:.1f}x reference",
        spread["name"]: f"{spread['rps'] / pg_spread['rps']:.0%} of pgbench spread",
        small["name"]: f"{small['rps'] / pg_small['rps']:.0%} of its statement in pgbench",
        anonymous["name"]: f"{anonymous['rps'] / small['rps']:.2f}x the page with User-Id",
        big["name"]: f"{small['rps'] / big['rps']:.2f}x slower than the 100-message page; "
        f"{big['rps'] / pg_big['rps']:.0%} of its statement in pgbench",
        listing["name"]: f"{listing['rps'] / pg_list['rps']:.0%} of its statement in pgbench",
        chat["name"]: f"{chat['errors']} errors",
    }
    for name, figures, cpu in rows:
        p99 = "" if figures["p99_ms"] != figures["p99_ms"] else f"{figures['p99_ms']:.1f}"
        instance_cpu = "" if name.startswith("pgbench") else f"{cpu['instances']:.2f}"
        print(
            f"| {name} | {figures['rps']:.0f} | {figures['p50_ms']:.1f} | {p99} | {figures['errors']} | "
            f"{instance_cpu} | {ratios.get(name, '')} |"
        )
    print()
    print(f"Direct instances (no load balancer), {DIRECT_CONNECTIONS} connections, alternated A B A B:")
    print()
    print("| scenario | instance | requests/s, each round | CPU ms/request, each round | errors |")
    print("|---|---|---|---|---:|")
    for name, instance, results in direct:
        print(
            f"| {name} | {instance} | "
            + " / ".join(f"{r['rps']:.0f}" for r in results)
            + " | "
            + " / ".join(f"{r['instance_cpu_ms']:.2f}" for r in results)
            + f" | {sum(r['errors'] for r in results)} |"
        )
    by_instance = {instance: sum(r["rps"] for r in results) for _, instance, results in direct}
    print(f"\nmembers-only reads: {by_instance['members only'] / by_instance['open reads']:.2f}x the open reads' rate")
    print()
    print("CPU per request (ms), by part of the stack:")
    print()
    print("| scenario | " + " | ".join(COMPONENTS) + " | all |")
    print("|---|" + "---:|" * (len(COMPONENTS) + 1))
    for name, _, cpu in rows:
        if not name.startswith("pgbench"):  # pgbench's backends come and go within the run: not counted
            print(f"| {name} | " + " | ".join(f"{cpu[c]:.2f}" for c in COMPONENTS) + f" | {sum(cpu.values()):.2f} |")
    stack_cpu = {name: sum(cpu.values()) for name, _, cpu in rows if not name.startswith("pgbench")}
    costliest = max(stack_cpu, key=stack_cpu.__getitem__)
    stack_pss = sum(memory.values())
    print()
    print(
        f"whole stack: CPU per request at most {stack_cpu[costliest]:.2f} ms ({costliest}; target ≤ "
        f"{STACK_CPU_MS_TARGET}: {'met' if stack_cpu[costliest] <= STACK_CPU_MS_TARGET else 'MISSED'}), "
        f"PSS {stack_pss:.0f} MiB (target < {STACK_PSS_MIB_TARGET}: "
        f"{'met' if stack_pss < STACK_PSS_MIB_TARGET else 'MISSED'})"
    )
    print()
    print(f"events relayed between the posts and the reads: {relayed} in {relay_seconds:.1f}s")
    for moment, instances_memory in (("under load (the hot posts)", memory_under_load), ("at the end", memory_at_end)):
        print(
            f"memory (PSS, MiB) per serving instance {moment}: "
            + ", ".join(f"{held:.0f}" for held, _ in instances_memory)
            + " (RSS summed over its processes, a shared page counted in each: "
            + ", ".join(f"{summed:.0f}" for _, summed in instances_memory)
            + ")"
        )
    print(
        "memory (PSS, MiB) by part of the stack: "
        + ", ".join(f"{k} {v:.0f}" for k, v in memory.items())
        + f"; whole stack {sum(memory.values()):.0f}"
    )
    print()
    print("targets: " + "; ".join(f"{k}: {v}" for k, v in TARGETS.items()))
    missed = missed_targets(
        hot=hot,
        pg_hot=pg_hot,
        spread=spread,
        pg_spread=pg_spread,
        small=small,
        big=big,
        members_ratio=by_instance["members only"] / by_instance["open reads"],
        instance_pss_mib=[held for held, _ in memory_under_load + memory_at_end],
        stack_pss_mib=stack_pss,
        stack_cpu_ms=stack_cpu,
    )
    for target in missed:
        print(f"  MISSED {target}")
    if not missed:
        print("  every target checked here is met (reads: against the reference, bench/reference.py)")
    print("integrity after the run:")
    for rule, count in problems.items():
        print(f"  {'ok ' if count == 0 else 'BAD'} {rule}: {count}")
    return 0 if not missed and all(count == 0 for count in problems.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
