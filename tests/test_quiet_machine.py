"""The suite's reader-writer lock on the machine (tests/support/quiet_machine.py), with threads standing in for
xdist workers: flock(2) locks taken through separate opens conflict within one process as between processes."""

import fcntl
import threading

from tests.support import quiet_machine
from tests.support.processes import wait_until


def _gate_held_exclusively(state_dir) -> bool:
    with (state_dir / "machine.gate").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False


def test_a_quiet_machine_drill_waits_for_the_running_tests_and_holds_back_the_ones_that_start_after_it(tmp_path):
    entered: list[str] = []
    release = {name: threading.Event() for name in ("running", "drill", "later")}

    def take(name: str, lock) -> None:
        with lock(tmp_path):
            entered.append(name)
            release[name].wait(30)

    release["drill"].set()  # the drill and the later test end as soon as they are in
    release["later"].set()
    running = threading.Thread(target=take, args=("running", quiet_machine.shared))
    running.start()
    wait_until(lambda: entered == ["running"], 10, what="the running test in")

    drill = threading.Thread(target=take, args=("drill", quiet_machine.exclusive))
    drill.start()
    wait_until(lambda: _gate_held_exclusively(tmp_path), 10, what="the drill waiting at the gate")
    later = threading.Thread(target=take, args=("later", quiet_machine.shared))
    later.start()
    assert entered == ["running"]  # the drill waits while a test runs, and the later test waits behind it

    release["running"].set()
    for thread in (running, drill, later):
        thread.join(30)
    assert entered == ["running", "drill", "later"]


def test_tests_that_share_the_machine_run_together(tmp_path):
    inside = threading.Barrier(2, timeout=10)  # broken (and failing) unless both are in at once

    def take() -> None:
        with quiet_machine.shared(tmp_path):
            inside.wait()

    threads = [threading.Thread(target=take) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not inside.broken
