"""How long a deregistered instance keeps serving before it stops.

On SIGTERM an instance leaves Consul first, and the load balancer drops it once
its upstream list is rendered again. Stopping a fixed time after deregistering
trusts that render to come within that time; when it comes later (a loaded host,
a slow agent, a deregistration that failed), the requests NGINX still sends meet
a server that has stopped accepting: they wait on its socket until it closes and
are reset, and NGINX may not pass a reset POST on to another instance (it could
have been stored). So the drain lasts SHUTDOWN_DRAIN_SECONDS at least, and then
for as long as requests still arrive, until none has for QUIET_SECONDS, bounded
by as long again, so an instance always stops within its platform's grace period.

`Traffic` is what the master reads: the time the last request arrived at any of
its workers, in memory the master shares with the workers it forks (gunicorn's
`pre_request` hook marks it). `/health` does not count: Consul's and Docker's
checks ask it whether or not a load balancer routes here.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from multiprocessing.sharedctypes import RawValue

# A load balancer that still routes here sends a chat's requests far more often than this.
QUIET_SECONDS = 1.0
NOT_COUNTED = frozenset({"/health"})


class Traffic:
    """When a request last arrived, shared by a master and the workers it forks (create it before forking)."""

    def __init__(self) -> None:
        self._last = RawValue(ctypes.c_double, 0.0)  # time.monotonic(): one clock for every process

    def seen(self, path: str) -> None:
        if path not in NOT_COUNTED:
            self._last.value = time.monotonic()

    def quiet_for(self) -> float:
        return time.monotonic() - self._last.value


def drain(traffic: Traffic, minimum: float, warn: Callable[[str], None], quiet: float = QUIET_SECONDS) -> float:
    """Wait `minimum` seconds, then while requests still arrive, until none has for `quiet` seconds, at most
    `minimum` more; returns the seconds waited past `minimum`."""
    time.sleep(minimum)
    started = time.monotonic()
    if traffic.quiet_for() >= quiet:
        return 0.0
    warn(
        f"requests still arrive {minimum}s after deregistering (the load balancer has not dropped this "
        f"instance yet); serving until none has for {quiet}s, at most {minimum}s more"
    )
    while (waited := time.monotonic() - started) < minimum and (idle := traffic.quiet_for()) < quiet:
        time.sleep(min(quiet - idle, minimum - waited))
    waited = time.monotonic() - started
    if traffic.quiet_for() < quiet:
        warn(f"requests still arrive {minimum + waited:.1f}s after deregistering; stopping anyway")
    return waited
