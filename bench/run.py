"""`make bench`: every scenario against the running stack, pgbench in the same run, one table.

Usage: python bench/run.py [--url http://127.0.0.1:8085] [--duration 15] [--connections 64]

The database is reached with the libpq variables (PGHOST, PGPORT, PGUSER,
PGPASSWORD, PGDATABASE; defaults: the local stack's database as `make up`
creates it). Ratios compare scenarios measured in this same run, because
absolute figures on a shared 2-core machine move from run to run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import dataset as bench_dataset  # noqa: E402

# Targets from the performance issue, checked against this run's figures.
REFERENCE_BEST_HOT_RPS = 200  # the reference service at its best (8 clients), measured the same way
TARGETS = {
    "post_hot": "≥1.0x pgbench hot@64, ≥2.5x reference (500 rps), 0 errors, p99 < 250 ms",
    "post_spread": "≥1,000 rps and ≥35% of pgbench spread@64",
    "get_page_big": "≥1,500 rps, within 1.2x of the 100-message page",
    "get_conversations": "≥1,000 rps",
}


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
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "5s", "-s",
               str(BENCH_DIR / "wrk" / script), url]
    result = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60,
                            env={**os.environ, "BENCH_DIR": str(BENCH_DIR), **env})
    match = re.search(r"^WRK_JSON (.*)$", result.stdout, re.MULTILINE)
    if not match:
        raise RuntimeError(f"wrk printed no result:\n{result.stdout}\n{result.stderr}")
    figures = json.loads(match.group(1))
    figures["errors"] = sum(figures[k] for k in figures if k.startswith("errors_"))
    return figures


def pgbench(script: str, clients: int, duration: int, variables: dict[str, int]) -> dict:
    env = os.environ
    command = ["pgbench", "-n", "-f", str(BENCH_DIR / "pgbench" / script), "-c", str(clients), "-j", "2",
               "-T", str(duration), "-h", env.get("PGHOST", "127.0.0.1"), "-p", env.get("PGPORT", "5432"),
               "-U", env.get("PGUSER", "postgres")]
    for name, value in variables.items():
        command += ["-D", f"{name}={value}"]
    command.append(env.get("PGDATABASE", "messenger"))
    result = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60)
    if result.returncode != 0:
        raise RuntimeError(f"pgbench failed:\n{result.stdout}\n{result.stderr}")
    tps = float(re.search(r"tps = ([\d.]+)", result.stdout).group(1))
    latency = float(re.search(r"latency average = ([\d.]+) ms", result.stdout).group(1))
    failed = re.search(r"number of failed transactions: (\d+)", result.stdout)
    return {"rps": tps, "p50_ms": latency, "p99_ms": float("nan"), "errors": int(failed.group(1)) if failed else 0,
            "note": "latency is pgbench's average"}


def _processes():
    """(pid, parent pid, command line, RSS in MiB) of every readable process."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            status = (proc / "status").read_text()
        except OSError:
            continue
        rss = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        parent = re.search(r"^PPid:\s+(\d+)", status, re.MULTILINE)
        yield int(proc.name), int(parent.group(1)), cmdline, (int(rss.group(1)) / 1024 if rss else 0.0)


def rss_mib(patterns: dict[str, re.Pattern]) -> dict[str, float]:
    """Resident memory by component, summed over processes whose command line matches."""
    totals = {name: 0.0 for name in patterns}
    for _, _, cmdline, rss in _processes():
        for name, pattern in patterns.items():
            if pattern.search(cmdline):
                totals[name] += rss
                break
    return totals


def instance_rss_mib() -> list[float]:
    """RSS of each serving instance: a gunicorn master plus its workers."""
    serving = {pid: (parent, rss) for pid, parent, cmdline, rss in _processes()
               if "gunicorn" in cmdline and "messenger.wsgi" in cmdline}
    instances = {pid: rss for pid, (parent, rss) in serving.items() if parent not in serving}
    for pid, (parent, rss) in serving.items():
        if parent in instances:
            instances[parent] += rss
    return sorted(instances.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("BENCH_URL", "http://127.0.0.1:8085"))
    parser.add_argument("--duration", type=int, default=int(os.environ.get("BENCH_DURATION", "15")))
    parser.add_argument("--connections", type=int, default=64)
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

    duration, conns = args.duration, args.connections
    rows: list[tuple[str, dict]] = []

    def run(name: str, fn, *fn_args):
        print(f"bench: {name} ({duration}s) ...", flush=True)
        figures = fn(*fn_args)
        rows.append((name, figures))
        return figures

    pg_hot = run("pgbench: post, hot conversation, 64 clients", pgbench, "post_message_hot.sql", conns, duration,
                 {"hot_conversation": data.pg_hot_conversation, "hot_user": data.pg_hot_user})
    hot = run("POST message, hot conversation, 64 clients", wrk, args.url, "post_message_hot.lua", conns, duration,
              {"BENCH_CONVERSATION": str(data.hot_conversation), "BENCH_USER": str(data.hot_user)})
    memory_under_load = instance_rss_mib()
    pg_spread = run("pgbench: post, 1,000 conversations, 64 clients", pgbench, "post_message_spread.sql", conns,
                    duration, {"spread_first": data.pg_spread_first, "spread_last": data.pg_spread_last,
                               "spread_user": data.pg_hub_user})
    spread = run("POST message, 1,000 conversations, 64 clients", wrk, args.url, "post_message_spread.lua", conns,
                 duration, {"BENCH_SPREAD_FIRST": str(data.spread_first), "BENCH_SPREAD_LAST": str(data.spread_last),
                            "BENCH_USER": str(data.hub_user)})
    big = run("GET page, 100,000-message conversation", wrk, args.url, "get_path.lua", conns, duration,
              {"BENCH_PATH": f"/conversations/{data.big_conversation}/messages?after_index=50000"})
    small = run("GET page, 100-message conversation", wrk, args.url, "get_path.lua", conns, duration,
                {"BENCH_PATH": f"/conversations/{data.small_conversation}/messages"})
    convs = run("GET /conversations, user with 1,000", wrk, args.url, "get_path.lua", conns, duration,
                {"BENCH_PATH": "/conversations", "BENCH_USER": str(data.hub_user)})
    run("GET /health", wrk, args.url, "get_path.lua", conns, duration, {"BENCH_PATH": "/health"})

    stack = rss_mib({
        "instances": re.compile(r"gunicorn.*messenger\.wsgi"),
        "worker": re.compile(r"celery"),
        "nginx": re.compile(r"^nginx"),
        "consul": re.compile(r"^consul "),
        "upstream watcher": re.compile(r"upstream_watcher"),
        "postgresql": re.compile(r"^postgres"),
        "rabbitmq": re.compile(r"beam\.smp|epmd|erl_child_setup|inet_gethost"),
    })
    problems = bench_dataset.integrity_problems(info)

    print()
    print(f"| scenario | requests/s | p50 ms | p99 ms | errors | ratio |")
    print(f"|---|---:|---:|---:|---:|---|")
    ratios = {
        "POST message, hot conversation, 64 clients": f"{hot['rps'] / pg_hot['rps']:.2f}x pgbench hot, "
                                                      f"{hot['rps'] / REFERENCE_BEST_HOT_RPS:.1f}x reference",
        "POST message, 1,000 conversations, 64 clients": f"{spread['rps'] / pg_spread['rps']:.0%} of pgbench spread",
        "GET page, 100,000-message conversation": f"{small['rps'] / big['rps']:.2f}x slower than 100-message page",
    }
    for name, figures in rows:
        p99 = "" if figures["p99_ms"] != figures["p99_ms"] else f"{figures['p99_ms']:.1f}"
        print(f"| {name} | {figures['rps']:.0f} | {figures['p50_ms']:.1f} | {p99} | {figures['errors']} | "
              f"{ratios.get(name, '')} |")
    print()
    print("memory (RSS, MiB): per serving instance under load: "
          + ", ".join(f"{value:.0f}" for value in memory_under_load))
    print("memory (RSS, MiB) by component: " + ", ".join(f"{k} {v:.0f}" for k, v in stack.items())
          + f"; whole stack {sum(stack.values()):.0f}")
    print()
    print("targets: " + "; ".join(f"{k}: {v}" for k, v in TARGETS.items()))
    print("integrity after the run:")
    for rule, count in problems.items():
        print(f"  {'ok ' if count == 0 else 'BAD'} {rule}: {count}")
    return 0 if all(count == 0 for count in problems.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
