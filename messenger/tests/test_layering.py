"""The folders are the architecture: plumbing never imports the domain, integrations never import the chat."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Package -> the first-party packages its code must never import. Its tests may: they drive
# the plumbing through the chat, the one thing here that makes requests and events.
# `messenger` is the project that wires them all: nothing below it imports it.
FORBIDDEN = {
    "core": {"conversations", "outbox", "discovery", "messenger"},
    "discovery": {"conversations", "outbox", "messenger"},
    "outbox": {"conversations", "discovery", "messenger"},
    "conversations": {"messenger"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_nothing_above_it(package):
    offending = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in sorted((ROOT / package).rglob("*.py"))
        if "tests" not in path.relative_to(ROOT).parts and imported_packages(path) & FORBIDDEN[package]
    }
    assert offending == {}


def test_the_project_urls_take_no_plumbing_from_the_chat():
    assert "conversations" not in imported_packages(ROOT / "messenger" / "urls.py")
