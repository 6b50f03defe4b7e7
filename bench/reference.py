"""`make bench` beside the reference service: one instance of ours against one reference process, both scales.

Usage: python bench/reference.py [--duration 8] [--rounds 2]

The reference service (microservices-march/messenger, Node and Express) is
not built, fetched or started here: a user runs one process of it beside this
bench, on a database of its own (created from the reference's own schema file) on the same
PostgreSQL as ours, and names it:

    REFERENCE_URL         where it answers, e.g. http://127.0.0.1:4100 (unset: nothing is measured)
    REFERENCE_PGDATABASE  its database; the bench empties and seeds it for each scale
    REFERENCE_PID         its process, for CPU per request (default: the process listening on its port)

The bench starts instances of ours itself (gunicorn at its defaults, direct,
no load balancer, no broker), each on a database of its own that it creates
and migrates (`<PGDATABASE>_bench_tutorial`, `<PGDATABASE>_bench_large`), and
reaches both sides with the same wrk scripts, one wrk thread, 16 connections
for reads and 8 for posts. Two scales, each with the same shapes on both sides:

- tutorial: the three seed users, a conversation of 100 messages between the
  first two, the first user in two conversations, a fresh conversation to post to;
- large: bench/dataset.py's data set for ours (a user with 1,000 conversations,
  a conversation of 100 messages beside one of 100,000, ...) and the shapes the
  reference can serve for it (a user with 1,000 conversations, a conversation of
  100 messages, a fresh one to post to: it reads a conversation without paging).

Every scenario runs the reference, then ours, and again (A B A B); the hot
conversation is emptied on both sides before each post round. CPU per request
is the serving process's user + system time (gunicorn master and worker; node)
over the requests answered, from /proc. Missed targets are printed as
`MISSED <target>: <figure>` lines and the exit status is 1.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict as parse_conninfo
from psycopg.conninfo import make_conninfo

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

import dataset as bench_dataset  # noqa: E402
import run as bench_run  # noqa: E402

READ_CONNECTIONS = 16  # one process's worth of concurrency
POST_CONNECTIONS = 8  # the reference's best post rate is at about 8
TUTORIAL_MESSAGES = 100
# Ours against the reference, per process, in the same run (issue 22).
READ_RATIO = 1.0  # every read: at least the reference's requests/s, at no more CPU per request
POST_RATIO = 2.5
HEALTH_RATIO = 0.5
TARGETS = {
    "reads": f"each read (page with and without User-Id, members-only page, list) ≥{READ_RATIO}x the reference's "
    "requests/s at no more CPU per request, at both scales",
    "posts": f"≥{POST_RATIO}x the reference's requests/s on a hot conversation, at both scales",
    "health": f"≥{HEALTH_RATIO}x the reference's requests/s",
}


@dataclass(frozen=True)
class Shapes:
    """The ids one side's scenarios use."""

    page_conversation: int  # 100 messages
    page_member: int  # a participant of it
    list_user: int  # the user whose conversations are listed
    hot_conversation: int  # posted to, emptied before each round
    hot_user: int


@dataclass(frozen=True)
class Scenario:
    key: str  # names the target in a MISSED line
    name: str
    kind: str  # "read", "post" or "health"
    members_only: bool = False  # ours: the instance with READS_REQUIRE_MEMBER


SCENARIOS = (
    Scenario("page_user_id", "GET page of 100, User-Id", "read"),
    Scenario("page_anonymous", "GET page of 100, anonymous (the tutorial's)", "read"),
    Scenario("page_members_only", "GET page of 100, members only (ours), User-Id", "read", members_only=True),
    Scenario("list", "GET /conversations, User-Id", "read"),
    Scenario("health", "GET /health", "health"),
    Scenario("post_hot", "POST message, hot conversation, 8 conn.", "post"),
)


def with_database(info: str, name: str) -> str:
    return make_conninfo(info, dbname=name)


# --- the reference's side: its own schema, seeded here -------------------------------------------


class Reference:
    def __init__(self, url: str, info: str, pid: int | None):
        self.url = url.rstrip("/")
        self.info = info
        self.pid = pid or listening_pid(urlsplit(self.url).port or 80)

    def cpu_seconds(self) -> float:
        if self.pid is None:
            return float("nan")
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[-1].split()
        return (int(fields[11]) + int(fields[12])) / bench_run.CLOCK_TICKS

    def seed(self, scale: str, seed_names: list[str]) -> Shapes:
        """Empty its database and write the scale's shapes (ids restart at 1, as on a fresh database)."""
        with psycopg.connect(self.info) as conn, conn.cursor() as cur:
            cur.execute("TRUNCATE messages, users_channels, channels, users RESTART IDENTITY CASCADE")
            seeds = [_reference_user(cur, name) for name in seed_names]
            if scale == "tutorial":
                page = _reference_pair(cur, seeds[0], seeds[1])
                _reference_pair(cur, seeds[0], seeds[2])
                _reference_fill(cur, page, seeds[0], TUTORIAL_MESSAGES)
                shapes = Shapes(page, seeds[1], seeds[0], _reference_pair(cur, seeds[1], seeds[2]), seeds[1])
            else:
                hub = _reference_user(cur, "bench hub")
                partners = cur.execute(
                    "INSERT INTO users (name) SELECT 'bench hub partner ' || n FROM generate_series(1, %s) AS n "
                    "RETURNING id",
                    [bench_dataset.SPREAD_CONVERSATIONS],
                ).fetchall()
                for (partner,) in partners:
                    _reference_pair(cur, hub, partner)
                small_a, small_b = _reference_user(cur, "bench small a"), _reference_user(cur, "bench small b")
                page = _reference_pair(cur, small_a, small_b)
                _reference_fill(cur, page, small_a, bench_dataset.SMALL_MESSAGES)
                hot_a, hot_b = _reference_user(cur, "bench hot a"), _reference_user(cur, "bench hot b")
                shapes = Shapes(page, small_b, hub, _reference_pair(cur, hot_a, hot_b), hot_a)
            conn.commit()
            cur.execute("ANALYZE")
        return shapes

    def empty(self, conversation: int) -> None:
        with psycopg.connect(self.info, autocommit=True) as conn:
            conn.execute("DELETE FROM messages WHERE channel_id = %s", [conversation])


def _reference_user(cur, name: str) -> int:
    return cur.execute("INSERT INTO users (name) VALUES (%s) RETURNING id", [name]).fetchone()[0]


def _reference_pair(cur, a: int, b: int) -> int:
    conversation = cur.execute("INSERT INTO channels DEFAULT VALUES RETURNING id").fetchone()[0]
    cur.execute(
        "INSERT INTO users_channels (channel_id, user_id) VALUES (%s, %s), (%s, %s)", [conversation, a, conversation, b]
    )
    return conversation


def _reference_fill(cur, conversation: int, user: int, count: int) -> None:
    cur.execute(
        "INSERT INTO messages (content, user_id, channel_id, index) "
        "SELECT 'generated message ' || n, %s, %s, n FROM generate_series(1, %s) AS n",
        [user, conversation, count],
    )


def listening_pid(port: int) -> int | None:
    """The process holding the listening TCP socket on `port` (this user's processes), from /proc."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                return int(proc.name)
        except OSError:
            continue
    return None


# --- our side: databases of its own, migrated, seeded with the same shapes -------------------


def prepare_ours(info: str, scale: str, seed_names: list[str]) -> Shapes:
    """Create and migrate the scale's database of ours (afresh), and write its shapes."""
    name = parse_conninfo(info)["dbname"]
    with psycopg.connect(with_database(info, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    parts = parse_conninfo(info)
    env = {
        **os.environ,
        "PGHOST": parts.get("host", "127.0.0.1"),
        "PGPORT": parts.get("port", "5432"),
        "PGUSER": parts.get("user", "postgres"),
        "PGDATABASE": name,
    }
    for command in (["migrate", "--verbosity", "0"], ["seed"]):
        subprocess.run(
            [sys.executable, "manage.py", *command], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL
        )
    if scale == "large":
        data = bench_dataset.ensure(info)
        return Shapes(data.small_conversation, data.small_member, data.hub_user, data.hot_conversation, data.hot_user)
    with psycopg.connect(info) as conn, conn.cursor() as cur:
        seeds = [bench_dataset._user(cur, seed) for seed in seed_names]
        page = bench_dataset._pair(cur, seeds[0], seeds[1])
        bench_dataset._pair(cur, seeds[0], seeds[2])
        bench_dataset._fill(cur, page, seeds[0], TUTORIAL_MESSAGES)
        shapes = Shapes(page, seeds[1], seeds[0], bench_dataset._pair(cur, seeds[1], seeds[2]), seeds[1])
        conn.commit()
        cur.execute("ANALYZE")
    return shapes


def empty_ours(info: str, conversation: int) -> None:
    with psycopg.connect(info, autocommit=True) as conn, conn.transaction():
        conn.execute("DELETE FROM messages WHERE channel_id = %s", [conversation])
        conn.execute("DELETE FROM outbox WHERE event_id LIKE %s", [f"{conversation}:%"])
        conn.execute("UPDATE channels SET last_index = 0 WHERE id = %s", [conversation])


def drop_ours(info: str) -> None:
    name = parse_conninfo(info)["dbname"]
    with psycopg.connect(with_database(info, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# --- measuring ------------------------------------------------------------------------------


def scenario_request(scenario: Scenario, shapes: Shapes) -> tuple[str, int, dict[str, str]]:
    """(wrk script, connections, its environment) for one side's shapes."""
    page = f"/conversations/{shapes.page_conversation}/messages"
    if scenario.kind == "post":
        return (
            "post_message_hot.lua",
            POST_CONNECTIONS,
            {"BENCH_CONVERSATION": str(shapes.hot_conversation), "BENCH_USER": str(shapes.hot_user)},
        )
    if scenario.key == "page_anonymous":
        return "get_path.lua", READ_CONNECTIONS, {"BENCH_PATH": page}
    if scenario.key == "list":
        return "get_path.lua", READ_CONNECTIONS, {"BENCH_PATH": "/conversations", "BENCH_USER": str(shapes.list_user)}
    if scenario.key == "health":
        return "get_path.lua", READ_CONNECTIONS, {"BENCH_PATH": "/health"}
    return "get_path.lua", READ_CONNECTIONS, {"BENCH_PATH": page, "BENCH_USER": str(shapes.page_member)}


def measure(url: str, cpu_seconds, scenario: Scenario, shapes: Shapes, duration: int) -> dict:
    script, connections, env = scenario_request(scenario, shapes)
    before = cpu_seconds()
    figures = bench_run.wrk(url, script, connections, duration, env)
    figures["cpu_ms"] = (cpu_seconds() - before) * 1000 / max(figures["requests"], 1)
    return figures


def combined(rounds: list[dict]) -> tuple[float, float]:
    """Requests/s and CPU ms/request over all rounds together."""
    requests = sum(r["requests"] for r in rounds)
    seconds = sum(r["seconds"] for r in rounds)
    cpu = sum(r["cpu_ms"] * r["requests"] for r in rounds) / max(requests, 1)
    return requests / max(seconds, 1e-9), cpu


def missed_targets(results: list[tuple[str, Scenario, dict[str, list[dict]]]]) -> list[str]:
    """The targets this run misses: (scale, scenario, each side's rounds) for each row; "ours" against "reference"."""
    missed = []
    for scale, scenario, sides in results:
        ours_rps, ours_cpu = combined(sides["ours"])
        ref_rps, ref_cpu = combined(sides["reference"])
        ratio = ours_rps / max(ref_rps, 1e-9)
        errors = sum(r["errors"] for r in sides["ours"])
        figure = f"{ours_rps:.0f} against {ref_rps:.0f} req/s ({ratio:.2f}x)"
        if scenario.kind == "read" and (ratio < READ_RATIO or not ours_cpu <= ref_cpu or errors):
            missed.append(
                f"reads {scale} {scenario.key}: {figure}, CPU {ours_cpu:.2f} against {ref_cpu:.2f} ms/req, "
                f"{errors} errors"
            )
        elif scenario.kind == "post" and (ratio < POST_RATIO or errors):
            missed.append(f"posts {scale} {scenario.key}: {figure}, {errors} errors")
        elif scenario.kind == "health" and (ratio < HEALTH_RATIO or errors):
            missed.append(f"health {scale}: {figure}, {errors} errors")
    return missed


class OursSide:
    """One tree of ours at one scale: an open-reads and a members-only instance, on the scale's database."""

    def __init__(self, name: str, root: Path, info: str, shapes: Shapes, log_folder: Path):
        self.name, self.info, self.shapes = name, info, shapes
        self.instances = {}
        for members_only in (False, True):
            self.instances[members_only] = bench_run.DirectInstance(
                f"{name}-{parse_conninfo(info)['dbname']}-{'members' if members_only else 'open'}",
                info,
                {"READS_REQUIRE_MEMBER": "true" if members_only else "false"},
                log_folder,
                root,
            )

    def wait_healthy(self) -> None:
        for instance in self.instances.values():
            instance.wait_healthy()

    def measure(self, scenario: Scenario, duration: int) -> dict:
        if scenario.kind == "post":
            empty_ours(self.info, self.shapes.hot_conversation)
        instance = self.instances[scenario.members_only]
        # Each route where NGINX sends it: reads and /health to the instance's live listener, posts to its own port.
        url = instance.reads_url if scenario.kind in ("read", "health") else instance.url
        return measure(url, instance.cpu_seconds, scenario, self.shapes, duration)

    def stop(self) -> None:
        for instance in self.instances.values():
            instance.stop()


class ReferenceSide:
    name = "reference"

    def __init__(self, reference: Reference, shapes: Shapes):
        self.reference, self.shapes = reference, shapes

    def measure(self, scenario: Scenario, duration: int) -> dict:
        if scenario.kind == "post":
            self.reference.empty(self.shapes.hot_conversation)
        return measure(self.reference.url, self.reference.cpu_seconds, scenario, self.shapes, duration)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=int(os.environ.get("REFERENCE_BENCH_DURATION", "8")))
    parser.add_argument("--rounds", type=int, default=2, help="A B rounds of each scenario")
    parser.add_argument("--scales", default="tutorial,large", help="comma-separated: tutorial, large")
    parser.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a checkout of another revision of this project, measured in the same rounds (before/after); repeatable",
    )
    parser.add_argument("--only", default="", help="comma-separated scenario keys to run (default: all)")
    args = parser.parse_args()
    scenarios = [s for s in SCENARIOS if not args.only or s.key in args.only.split(",")]

    url = os.environ.get("REFERENCE_URL", "")
    if not url:
        print(
            "bench: the reference comparison was NOT measured: set REFERENCE_URL (and REFERENCE_PGDATABASE, "
            "optionally REFERENCE_PID) to a running reference process (docs/performance.md)"
        )
        return 0
    if not os.environ.get("REFERENCE_PGDATABASE"):
        print("bench: REFERENCE_PGDATABASE must name the reference's database, which the bench seeds", file=sys.stderr)
        return 2
    info = bench_run.conninfo()
    reference = Reference(
        url,
        with_database(info, os.environ["REFERENCE_PGDATABASE"]),
        int(os.environ["REFERENCE_PID"]) if os.environ.get("REFERENCE_PID") else None,
    )
    if reference.pid is None:
        print("bench: no CPU figure for the reference: set REFERENCE_PID", file=sys.stderr)
    seed_names = [name for _, name in seed_users(info)]
    base = parse_conninfo(info)["dbname"]
    scratch = Path(tempfile.mkdtemp(prefix="messenger-bench-reference-"))
    trees = [("ours", ROOT)] + [
        (name, Path(path).resolve()) for name, _, path in (baseline.partition("=") for baseline in args.baseline)
    ]
    results: list[tuple[str, Scenario, dict[str, list[dict]]]] = []
    for scale in [s.strip() for s in args.scales.split(",") if s.strip()]:
        ours_info = with_database(info, f"{base}_bench_{scale}")
        sides: list = []
        try:
            print(f"bench: {scale} scale: preparing both databases ...", flush=True)
            ours_shapes = prepare_ours(ours_info, scale, seed_names)
            sides.append(ReferenceSide(reference, reference.seed(scale, seed_names)))
            for name, root in reversed(trees):  # the baseline before ours in each round
                sides.append(OursSide(name, root, ours_info, ours_shapes, scratch))
            for side in sides[1:]:
                side.wait_healthy()
            for scenario in scenarios:
                rounds: dict[str, list[dict]] = {side.name: [] for side in sides}
                for number in range(args.rounds):
                    for side in sides:
                        print(f"bench: {scale}, {scenario.name}, {side.name}, round {number + 1} ...", flush=True)
                        rounds[side.name].append(side.measure(scenario, args.duration))
                results.append((scale, scenario, rounds))
        finally:
            for side in sides[1:]:
                side.stop()
            drop_ours(ours_info)

    names = ["ours", *(name for name, _ in trees[1:]), "reference"] if results else []
    print()
    print(
        f"One instance of ours against one reference process ({url}), direct, "
        f"{' '.join(n for n in reversed(names))} in turn, {args.rounds} rounds of {args.duration} s; "
        "requests/s and CPU ms/request of each serving process, each round:"
    )
    print()
    print(
        "| scale | scenario | "
        + " | ".join(f"{n} req/s" for n in names)
        + " | ours/reference | "
        + " | ".join(f"{n} CPU ms/req" for n in names)
        + " | errors |"
    )
    print("|---|---|" + "---:|" * (2 * len(names) + 2))
    for scale, scenario, sides_rounds in results:
        ratio = combined(sides_rounds["ours"])[0] / max(combined(sides_rounds["reference"])[0], 1e-9)
        print(
            f"| {scale} | {scenario.name} | "
            + " | ".join(" / ".join(f"{r['rps']:.0f}" for r in sides_rounds[n]) for n in names)
            + f" | {ratio:.2f}x | "
            + " | ".join(" / ".join(f"{r['cpu_ms']:.2f}" for r in sides_rounds[n]) for n in names)
            + " | "
            + " / ".join(str(sum(r["errors"] for r in sides_rounds[n])) for n in names)
            + " |"
        )
    print()
    print("targets: " + "; ".join(f"{k}: {v}" for k, v in TARGETS.items()))
    missed = missed_targets(results)
    for target in missed:
        print(f"  MISSED {target}")
    if not missed:
        print("  every target against the reference is met")
    return 1 if missed else 0


def seed_users(info: str) -> tuple[tuple[int, str], ...]:
    """The tutorial's seed users, as the seed command declares them."""
    bench_run.service_statements(info)  # sets Django up
    from conversations.management.commands.seed import SEED_USERS

    return SEED_USERS


if __name__ == "__main__":
    sys.exit(main())
