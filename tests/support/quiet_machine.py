"""The machine to itself, for the drills that measure recovery against an issue's bounds.

`make test` runs three xdist workers on a two-core machine. A host-loss drill
measures how soon writes come back (15 s at most, issue 19): Consul's failure
detection, Patroni's loop, the instances' reconnects and checks. With two other
workers running gunicorns, browsers and fuzzers beside it (load average 20 and
more), each of those steps stretches, and the drill would measure the suite
rather than the failover.

So the tests share the machine through one reader-writer lock on files under
`.state/`: every test holds it shared while it runs, and a test marked
`quiet_machine` holds it exclusive. A second lock, the gate, gives the drill
precedence: while it waits, no other test starts, and the ones running finish.
flock(2) locks belong to the open file, so a worker that dies releases its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, mode)  # blocks until granted; released when the file is closed
        yield


@contextlib.contextmanager
def shared(state_dir: Path) -> Iterator[None]:
    """While an ordinary test runs: waits while a quiet-machine drill waits or runs."""
    with _flock(state_dir / "machine.gate", fcntl.LOCK_SH):
        pass  # through the gate: no drill is waiting
    with _flock(state_dir / "machine.lock", fcntl.LOCK_SH):
        yield


@contextlib.contextmanager
def exclusive(state_dir: Path) -> Iterator[float]:
    """While a drill runs: no other test does. Yields the seconds it waited for the others to finish."""
    asked = time.monotonic()
    with _flock(state_dir / "machine.gate", fcntl.LOCK_EX), _flock(state_dir / "machine.lock", fcntl.LOCK_EX):
        yield time.monotonic() - asked
