#!/usr/bin/env python3
"""Keep NGINX's upstream list in step with Consul: consul-template's job, for hosts without it.

The Docker image runs consul-template with nginx.ctmpl. Hosts without Docker
(and without consul-template, which no package registry carries) run this
process instead. It does the same job the same way:

1. watch Consul's health API for the passing instances of the service, with
   blocking queries (the agent holds each request until something changes);
2. after a change, wait for a short quiet window, so a burst (three instances
   passing their first check together) becomes one reload;
3. render the upstream list exactly as nginx.ctmpl does (a test keeps the two
   identical), write it atomically, and hand it to nginx-apply.sh, the image's
   template command: it installs the list only if `nginx -t` accepts it, then
   reloads NGINX, or starts it when it is not running;
4. while Consul is unreachable, keep the last good list (NGINX goes on routing
   to the last known instances) and retry with backoff, forever.

NGINX runs as its own daemon under the state folder (`-p`: pid, logs and temp
files there; never the system service). This process only renders and signals
it, so its own crash never takes the load balancer down. SIGTERM or SIGINT stop
this process and then NGINX, gracefully.

Standard library only, so it runs with any Python 3.9 or later.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
APPLY_SCRIPT = HERE / "nginx-apply.sh"
# Files of this folder NGINX reads as they are; linked into the state folder,
# so both runtimes use the very same server block.
SHARED_FILES = ("nginx.conf", "messenger-server.conf")
UPSTREAM_FILE = "messenger-upstream.conf"
LISTEN_FILE = "messenger-listen.conf"
STATUS_FILE = "status.json"

# Retrying an unreachable Consul: 250ms, 500ms, 1s, ... at most 5s apart.
BACKOFF_BASE = 0.25
BACKOFF_MAX = 5.0

log = logging.getLogger("upstream_watcher")


class ConsulUnavailable(Exception):
    """The Consul agent did not answer, or answered with an error."""


class Stop(Exception):
    """SIGTERM or SIGINT arrived while waiting on Consul."""


# --- rendering ---------------------------------------------------------------


_NO_INSTANCE = [
    "    # No passing instance. NGINX refuses an empty upstream block, so this",
    "    # placeholder (never contacted) keeps the configuration valid while the",
    "    # server block answers 503 with a JSON error.",
    "    server 127.0.0.1:9 down;",
]


# The live routes go by conversation (the path), each to one listener while
# the instances stay: a long-poll loop's next request then finds what its
# listener remembered of the last answer, and the waiters of one conversation
# share that listener's reads (conversations/live). Plain reads hash by their
# request id, so they spread (messenger-server.conf's $messenger_live_key).
# `consistent` moves only the conversations of an instance that comes or goes.
# Before `keepalive`, as NGINX requires of a balancing method.
_BY_CONVERSATION = ["    hash $messenger_live_key consistent;"]


def _host(address: str) -> str:
    """An address as NGINX writes it before a port (an IPv6 literal in brackets)."""
    return f"[{address}]" if ":" in address else address


def render_upstream(service: str, instances: Sequence[tuple[str, int] | tuple[str, int, int]]) -> str:
    """The upstream lists for these instances, as nginx.ctmpl renders them.

    An instance is (address, port, live port): the live port is the one its
    Consul entry advertises in its meta (`live_port`, conversations/live), its
    own port when it advertises none (a pair). Sorted, so the same set always
    renders the same text and a reordering in Consul's answer never causes a reload.
    """
    servers = sorted({(address, port, rest[0] if rest else port) for address, port, *rest in instances})
    lines = [f'# Rendered from Consul\'s health API: the passing instances of "{service}". Do not edit.']
    for upstream, port_of in (("messenger_service", 1), ("messenger_live", 2)):
        lines.append(f"upstream {upstream} {{")
        for server in servers:
            lines.append(f"    server {_host(server[0])}:{server[port_of]};")
        lines += [
            *(_NO_INSTANCE if not servers else []),
            *(_BY_CONVERSATION if port_of == 2 else []),
            "    keepalive 16;",
        ]
        lines += ["}", ""]
    lines += [
        "# Upstream-Host names the instance that answered as Consul's catalog does (its",
        "# address and registered port), also when its live listener did; an address",
        "# this list does not hold (several tried, comma-separated) is shown as it is.",
        "map $upstream_addr $messenger_upstream_host {",
        "    default $upstream_addr;",
        *(f"    {_host(address)}:{live} {_host(address)}:{port};" for address, port, live in servers),
        "}",
        "",
        "# How many instances the upstream holds; 0 makes the server block answer 503.",
        'map "" $messenger_instances {',
        f"    default {len(servers)};",
        "}",
        "",
    ]
    return "\n".join(lines)


def write_atomically(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, then rename over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- Consul --------------------------------------------------------------------


def fetch_passing(consul_url: str, service: str, index: int, wait: float) -> tuple[list[tuple[str, int, int]], int]:
    """Passing instances of `service` and Consul's index, blocking up to `wait` seconds for a change past `index`."""
    query = urllib.parse.urlencode({"passing": "true", "index": index, "wait": f"{max(int(wait * 1000), 1)}ms"})
    url = f"{consul_url}/v1/health/service/{urllib.parse.quote(service)}?{query}"
    # Consul may hold the request up to wait + wait/16 (its jitter).
    try:
        with urllib.request.urlopen(url, timeout=wait * 17 / 16 + 5) as response:
            new_index = int(response.headers.get("X-Consul-Index") or 0)
            entries = json.load(response)
    except (OSError, ValueError) as exc:  # URLError, timeouts, refused, bad JSON
        raise ConsulUnavailable(f"{url}: {exc}") from exc
    instances = [
        # An instance registered without its own address is reached at its node's.
        (
            entry["Service"]["Address"] or entry["Node"]["Address"],
            int(entry["Service"]["Port"]),
            int((entry["Service"].get("Meta") or {}).get("live_port") or entry["Service"]["Port"]),
        )
        for entry in entries
    ]
    return instances, new_index


# --- NGINX ---------------------------------------------------------------------


class Nginx:
    """Our own NGINX: configuration in a state folder; pid, logs and temp files under its prefix (by default the same folder)."""

    def __init__(self, state_dir: Path, binary: str, prefix: Path | None = None):
        self.state_dir = state_dir
        self.binary = binary
        self.prefix = prefix or state_dir

    def _command(self, *args: str) -> list[str]:
        return [self.binary, "-e", "stderr", "-p", f"{self.prefix}/", "-c", str(self.state_dir / "nginx.conf"), *args]

    def prepare(self, listen: str) -> None:
        """Lay out the state folder: shared files linked, the listen file written."""
        for sub in ("logs", "temp"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        for name in SHARED_FILES:
            link = self.state_dir / name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(HERE / name)
        write_atomically(
            self.state_dir / LISTEN_FILE,
            f"# Written by upstream_watcher.py from LB_PORT; included by messenger-server.conf.\nlisten {listen};\n",
        )

    def master_pid(self) -> int | None:
        """The running master's pid, or None.

        A stale pid file counts as not running, and so does a killed master that
        no one has reaped yet (a zombie: adopting it would leave nothing serving).
        """
        try:
            pid = int((self.prefix / "nginx.pid").read_text().strip())
            os.kill(pid, 0)
            proc = Path(f"/proc/{pid}")
            if proc.exists():
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state == "Z" or (proc / "comm").read_text().strip() != "nginx":
                    return None
        except (OSError, ValueError, IndexError):
            return None
        return pid

    def apply(self, text: str) -> str | None:
        """Install `text` as the upstream list if NGINX accepts it, then reload or start NGINX.

        Returns "reloaded" or "started", or None when the list was not applied.
        """
        write_atomically(self.state_dir / f"{UPSTREAM_FILE}.rendered", text)
        env = dict(os.environ, NGINX_CONF_DIR=str(self.state_dir), NGINX_PREFIX=str(self.prefix), NGINX_BIN=self.binary)
        result = subprocess.run(["sh", str(APPLY_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
        output = (result.stdout + result.stderr).strip()
        if result.returncode == 0:
            log.info("%s", output)
            return "reloaded" if "reloaded" in result.stdout else "started"
        log.error("upstream list not applied (nginx-apply.sh exit %s): %s", result.returncode, output)
        return None

    def quit(self, timeout: float = 30) -> None:
        """Graceful stop: in-flight requests finish, then NGINX exits."""
        pid = self.master_pid()
        if pid is None:
            return
        subprocess.run(self._command("-s", "quit"), capture_output=True, timeout=30)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.master_pid() is not None:
            time.sleep(0.05)


# --- the watch loop --------------------------------------------------------------


class Watcher:
    """The watch loop: Consul's passing instances in, NGINX's upstream list out."""

    def __init__(self, args: argparse.Namespace):
        self.consul = args.consul if "://" in args.consul else f"http://{args.consul}"
        self.service = args.service
        self.state_dir = Path(args.state_dir).resolve()
        self.nginx = Nginx(self.state_dir, args.nginx, Path(args.prefix).resolve() if args.prefix else None)
        self.listen = f"{args.bind}:{args.port}" if args.bind else str(args.port)
        self.block_wait = args.block_wait
        self.wait_min = args.wait_min
        self.wait_max = args.wait_max
        self.empty_grace = args.empty_grace
        self.keep_nginx = args.keep_nginx
        self._interruptible = False
        self._stopping = False
        self._applied_text = ""  # the upstream list NGINX runs with
        self.status = {
            "pid": os.getpid(),
            "consul": self.consul,
            "service": self.service,
            "listen": self.listen,
            "consul_reachable": None,
            "index": 0,
            "instances": [],
            "reloaded": 0,
            "started": 0,
            "rejected": 0,
            "consul_errors": 0,
            "last_applied_at": None,
        }

    # Signals: stop at once while waiting on Consul; otherwise finish the step first.
    def _on_signal(self, signum, _frame):
        self._stopping = True
        log.info("received %s; stopping", signal.Signals(signum).name)
        if self._interruptible:
            raise Stop()

    def _wait_on_consul(self, index: int, wait: float):
        self._interruptible = True
        try:
            if self._stopping:
                raise Stop()
            return fetch_passing(self.consul, self.service, index, wait)
        finally:
            self._interruptible = False

    def _sleep(self, seconds: float) -> None:
        self._interruptible = True
        try:
            if self._stopping:
                raise Stop()
            time.sleep(seconds)
        finally:
            self._interruptible = False

    def _settle(self, instances, index):
        """After a change, read again until Consul stays quiet for wait_min (at most wait_max)."""
        deadline = time.monotonic() + self.wait_max
        while (remaining := deadline - time.monotonic()) > 0:
            newer, new_index = self._wait_on_consul(index, min(self.wait_min, remaining))
            if new_index == index:
                break
            instances, index = newer, new_index
        return instances, index

    def _apply(self, instances) -> bool:
        text = render_upstream(self.service, instances)
        outcome = self.nginx.apply(text)
        if outcome:
            self.status[outcome] += 1
            self.status["last_applied_at"] = time.time()
            self.status["instances"] = [f"{a}:{p}" for a, p, *_ in sorted(set(instances))]
            self._applied_text = text
            return True
        self.status["rejected"] += 1
        return False

    def _save_status(self) -> None:
        write_atomically(self.state_dir / STATUS_FILE, json.dumps(self.status, indent=2) + "\n")

    def start(self) -> None:
        """Serve at once: with the last list this folder holds, or with none (503) until Consul answers."""
        self.nginx.prepare(self.listen)
        live = self.state_dir / UPSTREAM_FILE
        self._applied_text = live.read_text() if live.exists() else render_upstream(self.service, [])
        if self.nginx.master_pid() is None:
            if not self.nginx.apply(self._applied_text):
                raise SystemExit("NGINX refused to start; see the messages above")
            self.status["started"] += 1
        self._save_status()

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            self.start()
            self._loop()
        except Stop:
            pass
        finally:
            if not self.keep_nginx:
                log.info("stopping NGINX gracefully")
                self.nginx.quit()
            log.info("stopped")

    def _loop(self) -> None:
        index = 0
        failures = 0
        back_since = None  # when Consul answered again after an outage
        while not self._stopping:
            # An empty answer right after an outage is held back (see --empty-grace):
            # wake up when that hold ends, even if nothing changes meanwhile.
            wait = self.block_wait
            holding_until = back_since + self.empty_grace if back_since else None
            if holding_until:
                wait = max(min(wait, holding_until - time.monotonic()), 0.05)
            try:
                instances, new_index = self._wait_on_consul(index, wait)
                if new_index != index:
                    instances, new_index = self._settle(instances, new_index)
            except ConsulUnavailable as exc:
                # The agent that answers next may be a new one whose index starts
                # lower: waiting for ours would block for a whole block_wait.
                index = 0
                failures += 1
                self.status["consul_errors"] += 1
                if self.status["consul_reachable"] is not False:
                    log.warning(
                        "Consul unreachable; NGINX keeps the last list (%d instances): %s",
                        len(self.status["instances"]),
                        exc,
                    )
                self.status["consul_reachable"] = False
                self._save_status()
                self._sleep(min(BACKOFF_BASE * 2 ** (failures - 1), BACKOFF_MAX))
                continue

            if failures:
                log.info("Consul answers again after %d failed attempts", failures)
                back_since = time.monotonic()
                failures = 0
            self.status["consul_reachable"] = True
            # Consul's blocking-query rules: its index only grows, and one that
            # goes back (a new agent, a restored snapshot) means start over.
            index = 0 if new_index < index else max(new_index, 1)
            self.status["index"] = index

            if not instances and back_since and time.monotonic() < back_since + self.empty_grace:
                # A Consul agent that just restarted knows no service until the
                # instances register again and pass a check: not a reason to
                # turn every request away yet.
                log.info(
                    "Consul lists no passing instance right after an outage; keeping the last list for up to %ss",
                    self.empty_grace,
                )
                self._save_status()
                continue
            back_since = None

            text = render_upstream(self.service, instances)
            if text == self._applied_text and self.nginx.master_pid() is not None:
                # NGINX already runs with this list (after a restart of this
                # process, the one it found in the state folder).
                self.status["instances"] = [f"{a}:{p}" for a, p, *_ in sorted(set(instances))]
            else:
                log.info(
                    "passing instances of %s: %s",
                    self.service,
                    ", ".join(f"{a}:{p}" for a, p, *_ in sorted(set(instances))) or "none",
                )
                self._apply(instances)
            self._save_status()


def parse_args(argv: list[str]) -> argparse.Namespace:
    default_consul = f"{os.environ.get('CONSUL_HOST', 'consul-client')}:{os.environ.get('CONSUL_PORT', '8500')}"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--state-dir",
        required=True,
        help="folder for NGINX's configuration (and, without --prefix, its pid, logs and temp files)",
    )
    parser.add_argument(
        "--consul",
        default=default_consul,
        help="the Consul agent: host:port or its URL (default: CONSUL_HOST:CONSUL_PORT)",
    )
    parser.add_argument("--service", default="messenger", help="Consul service to balance (default: messenger)")
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("LB_PORT", "8085")),
        help="port NGINX listens on (default: LB_PORT or 8085)",
    )
    parser.add_argument("--bind", default=os.environ.get("LB_BIND", ""), help="address NGINX listens on (default: all)")
    parser.add_argument("--prefix", help="folder for NGINX's pid, logs and temp files (default: the state folder)")
    parser.add_argument("--nginx", default="nginx", help="the nginx binary")
    parser.add_argument("--block-wait", type=float, default=55.0, help="seconds Consul may hold a blocking query")
    parser.add_argument(
        "--wait-min",
        type=float,
        default=0.25,
        help="quiet seconds after a change before rendering (consul-template's wait.min)",
    )
    parser.add_argument(
        "--wait-max",
        type=float,
        default=1.0,
        help="longest wait for quiet before rendering anyway (consul-template's wait.max)",
    )
    parser.add_argument(
        "--empty-grace",
        type=float,
        default=30.0,
        help="seconds an empty answer right after a Consul outage is not applied",
    )
    parser.add_argument("--keep-nginx", action="store_true", help="leave NGINX running when this process stops")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    Watcher(parse_args(sys.argv[1:] if argv is None else argv)).run()


if __name__ == "__main__":
    main()
