"""What a forking process hands its children: the loaded app's objects, frozen out of the collector.

An instance's gunicorn master preloads Django and the app, then forks its live listener and its WSGI
workers; the Celery worker loads the app, then forks its pool's child and the embedded beat. Each
child shares the parent's pages until it writes to them, and Python's cyclic collector writes to every
object it examines. Objects in the collector's permanent generation (`gc.freeze`) are never examined,
so each parent freezes what it has loaded just before it forks (bench/run.py measures what that
saves: docs/performance.md). Each probe runs in a process of its own: a frozen heap is never
collected again, which pytest's own process should not inherit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

GUNICORN_MASTER = """
import gc, json, logging
from messenger import gunicorn_conf   # as gunicorn reads it
import django
django.setup()                        # what preload_app does next
loaded = gc.get_freeze_count()

class Arbiter:                        # what when_ready reads of gunicorn's arbiter
    LISTENERS = []
    log = logging.getLogger("probe")

gunicorn_conf.when_ready(Arbiter())   # gunicorn forks the workers right after it
print(json.dumps({"before": loaded, "after": gc.get_freeze_count(), "tracked": len(gc.get_objects())}))
"""

CELERY_WORKER = """
import gc, json
import django
django.setup()
from celery import signals
from messenger.celery import app
app.loader.import_default_modules()   # the worker's own imports before its pool starts
loaded = gc.get_freeze_count()
signals.worker_before_create_process.send(sender=None)   # the prefork pool, before each child
print(json.dumps({"before": loaded, "after": gc.get_freeze_count(), "tracked": len(gc.get_objects())}))
"""


def _probe(script: str) -> dict[str, int]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PG", "CONSUL", "PORT", "LIVE_"))}
    # No PGHOST: the settings name make run's embedded PostgreSQL (nothing connects here), and no live
    # listener or Consul registration starts; what is left of when_ready is what every instance runs.
    env.update(DJANGO_SETTINGS_MODULE="messenger.settings", PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_gunicorn_master_freezes_the_preloaded_app_before_it_forks():
    counts = _probe(GUNICORN_MASTER)
    assert counts["before"] == 0, counts
    # Django, DRF and the app: tens of thousands of tracked objects, all of them now frozen.
    assert counts["after"] > 20_000, counts
    assert counts["tracked"] < counts["after"] / 10, counts  # what a child's collection still examines


def test_the_celery_worker_freezes_the_loaded_app_before_it_forks_a_child():
    counts = _probe(CELERY_WORKER)
    assert counts["before"] == 0, counts
    assert counts["after"] > 20_000, counts
    assert counts["tracked"] < counts["after"] / 10, counts
