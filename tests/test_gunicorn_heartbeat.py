"""Where an instance's gunicorn workers keep their heartbeat file.

Each worker proves it is alive by touching a file every second, and the master kills a worker that has
not for `timeout` (30 s), whatever request it is serving. On a disk-backed folder that touch waits for
the disk: a fresh-clone run's swarm drill saw host 1 stall for minutes and both of its instances'
masters kill their workers mid-request. So the file is in memory (/dev/shm) for the WSGI workers and
the live listener's alike.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.live_service import database_env
from tests.support.processes import wait_until
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

HEARTBEAT_PREFIX = "wgunicorn-"  # gunicorn.workers.workertmp names its file so


def _heartbeat_files(pid: int) -> list[str]:
    """The (unlinked) heartbeat files a process holds open, by the path it had."""
    held = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if HEARTBEAT_PREFIX in target:
            held.append(target.removesuffix(" (deleted)"))
    return held


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    members.append(int(entry.name))
            except ProcessLookupError:
                continue
    return members


def _mount_type(path: str) -> str:
    """The file system type of the mount that holds `path` (the longest mount point that prefixes it)."""
    best, kind = "", ""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, point, fs_type, *_ = line.split()
        if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
            best, kind = point, fs_type
    return kind


def test_every_worker_of_an_instance_keeps_its_heartbeat_in_memory_not_on_disk(tmp_path):
    service = ServiceProcess(database_env(), tmp_path / "service.log").start()
    try:
        held: dict[int, list[str]] = {}

        def both_workers_hold_one() -> bool:
            # The instance's session: its master, its WSGI worker, the live listener's master and worker.
            held.clear()
            for pid in _group_members(service.process.pid):
                held[pid] = _heartbeat_files(pid)
            return sum(1 for files in held.values() if files) >= 2

        wait_until(both_workers_hold_one, 30, what="the WSGI worker and the live listener's worker")
        files = [path for paths in held.values() for path in paths]
        assert files, held
        for path in files:
            assert Path(path).parent == Path("/dev/shm"), files
            assert _mount_type(path) == "tmpfs", (path, _mount_type(path))
    finally:
        service.stop()
