"""The figures the drills measure: printed for `pytest -s`, and appended to `.state/test-figures.txt`, where a
parallel run's figures can be read too (xdist workers' output is not shown). Not asserted beyond the issues'
bounds: speed goals live in `make bench`."""

from __future__ import annotations

import time
from pathlib import Path

FIGURES = Path(__file__).resolve().parents[2] / ".state" / "test-figures.txt"


def report(kind: str, name: str, value) -> None:
    """`[<kind> figure] <name>: <value>`, timestamped in the file."""
    line = f"[{kind} figure] {name}: {value}"
    print(f"\n{line}")
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    with FIGURES.open("a") as out:
        out.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")
