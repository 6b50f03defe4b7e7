"""`make bench` fails when a target is missed, and says which (bench/run.py's missed_targets)."""

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("bench_run", Path(__file__).resolve().parent.parent / "bench" / "run.py")
assert _spec and _spec.loader
bench_run = importlib.util.module_from_spec(_spec)
sys.modules["bench_run"] = bench_run  # its dataclasses look their module up there
_spec.loader.exec_module(bench_run)


def figures(rps, errors=0, p99=50.0):
    return {"rps": rps, "errors": errors, "p99_ms": p99}


MET = {
    "hot": figures(1200),
    "pg_hot": figures(1100),
    "spread": figures(1500),
    "pg_spread": figures(3000),
    "small": figures(2000),
    "big": figures(1800),
    "members_ratio": 0.95,
    "instance_rss_mib": [90.0, 95.0],
    "stack_pss_mib": 700.0,
}


def test_figures_meeting_every_target_miss_none():
    assert bench_run.missed_targets(**MET) == []


@pytest.mark.parametrize(
    "change, missed",
    [
        ({"hot": figures(1000)}, "post_hot"),  # below pgbench's rate
        ({"hot": figures(1200, errors=3)}, "post_hot"),
        ({"hot": figures(1200, p99=float("nan"))}, "post_hot"),
        ({"spread": figures(900)}, "post_spread"),
        ({"big": figures(1500)}, "get_page_big"),
        ({"members_ratio": 0.85}, "members_only"),
        ({"instance_rss_mib": [90.0, 151.0]}, "memory"),
        ({"stack_pss_mib": 1100.0}, "memory"),
    ],
)
def test_a_missed_target_is_named_with_its_figure(change, missed):
    result = bench_run.missed_targets(**{**MET, **change})
    assert [line.split(":")[0] for line in result] == [missed]
