"""Every module path, file and function the docs, the README and the code's docstrings and comments name exists.

A reference is a backquoted span (Markdown's `x`, reStructuredText's ``x``) that
looks like one of:

- a file of the repository, `infrastructure/lib.sh` or `docker/.env` (relative
  to the repository's root or to the document's folder), or a bare file name
  with a known suffix, `gunicorn_conf.py`, which must exist somewhere in it;
- a dotted Python path whose first part is one of the project's packages or
  modules, `conversations.selectors.messages_page_read`, or a module's own file name
  without `.py`, `selectors.messages_page_read`: its longest prefix that is a module
  must exist, and every later part must be a name defined in that module (a
  function, class, method or assignment), optionally called: `start()`.

In docstrings and comments a dotted path counts also without backquotes. Read
as source text, never imported: naming a module in a doc must not run it.
"""

import ast
import io
import os
import re
import tokenize
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("messenger", "core", "outbox", "discovery", "conversations", "tests", "bench", "scripts")
SUFFIXES = (".py", ".sh", ".md", ".sql", ".lua", ".conf", ".toml", ".ini", ".txt", ".yml", ".yaml", ".json", ".j2")
SPAN = re.compile(r"``([^`\n]+)``|`([^`\n]+)`")
DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+(\(\))?$")
FILE = re.compile(r"^[\w.-]+(/[\w.-]+)*/?$")
# Dotted names that are not Python paths, though they start like one.
NOT_MODULES = {
    "messenger.requests": "the request log's logger",
    "messenger.tasks": "Celery's own queue",
    "docker.io": "Debian's Docker package",
    "http.server": "the standard library's",
    "http.disconnect": "the ASGI message a server sends when the client has gone",
}


def python_files():
    return [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")] + [
        ROOT / "conftest.py",
        ROOT / "manage.py",
    ]


@cache
def modules_by_name() -> dict[str, list[Path]]:
    """Module paths (`core.http.observability`) and bare module names (`observability`) -> files."""
    found: dict[str, list[Path]] = {}
    for path in python_files():
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found.setdefault(".".join(parts), []).append(path)
        found.setdefault(parts[-1], []).append(path)
        if path.name == "models.py":  # Django's `app_label.Model`: `outbox.OutboxEvent`
            found.setdefault(".".join(parts[:-1]), []).append(path)
    return found


@cache
def defined_names(path: Path) -> frozenset[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                for leaf in ast.walk(target):
                    if isinstance(leaf, ast.Name):
                        names.add(leaf.id)
                    elif isinstance(leaf, ast.Attribute):
                        names.add(leaf.attr)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return frozenset(names)


# Folders that are not the repository's: never walked (the hosts' engines keep whole image stores under .state/,
# which another test may be removing while this one runs).
NOT_WALKED = {".git", ".venv", ".state", "var"}


@cache
def repository_files() -> frozenset[str]:
    files = []
    for folder, subfolders, names in os.walk(ROOT):
        subfolders[:] = [name for name in subfolders if name not in NOT_WALKED]
        files += [str((Path(folder) / name).relative_to(ROOT)) for name in names + subfolders]
    return frozenset(files)


def dotted_problem(reference: str) -> str | None:
    parts = reference.removesuffix("()").split(".")
    if parts[0] not in modules_by_name() or ".".join(parts) in NOT_MODULES:
        return None  # not the project's (os.environ), or a name of something else
    for cut in range(len(parts), 0, -1):
        files = modules_by_name().get(".".join(parts[:cut]))
        if files:
            rest = parts[cut:]
            if all(any(name in defined_names(f) for f in files) for name in rest):
                return None
            return f"no {'.'.join(rest)} in {', '.join(sorted({str(f.relative_to(ROOT)) for f in files}))}"
    return "no such module"  # unreachable: parts[0] is a module


# The folders the system writes as it runs (.gitignore keeps them out of the repository).
RUNTIME_FOLDERS = frozenset({".state", "var", ".venv", "staticfiles", ".pytest_cache"})


def file_problem(reference: str, document: Path) -> str | None:
    reference = reference.rstrip("/")
    if "/" in reference:
        top = reference.split("/")[0]
        # A runtime path (.state/..., var/...: made by running the system, so present or not by the order the suite
        # ran in) or a URL's path (/v1/...) names nothing the repository holds.
        if top in RUNTIME_FOLDERS or top not in {p.name for p in ROOT.iterdir()} | {".."}:
            return None
        for base in (ROOT, document.parent):
            if (base / reference).exists():
                return None
        return "no such file"
    if reference.endswith(SUFFIXES) and not reference.startswith("."):
        if any(f.split("/")[-1] == reference for f in repository_files()):
            return None
        return "no such file anywhere in the repository"
    return None


def references(text: str):
    for match in SPAN.finditer(text):
        span = (match.group(1) or match.group(2)).strip()
        if DOTTED.match(span) and not span.endswith(SUFFIXES):
            yield span, "dotted"
        elif FILE.match(span) and ("/" in span or span.endswith(SUFFIXES)):
            yield span, "file"


BARE_DOTTED = re.compile(r"(?<![\w.`/-])[a-z_]\w*(?:\.[A-Za-z_]\w*)+(?:\(\))?(?![\w`/(-])")


def docstrings(path: Path):
    """Its docstrings and comments, where a dotted path is a reference also without backquotes."""
    source = path.read_text()
    texts = [
        text
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        and (text := ast.get_docstring(node, clean=False))
    ]
    with io.StringIO(source) as lines:
        texts += [token.string for token in tokenize.generate_tokens(lines.readline) if token.type == tokenize.COMMENT]
    for text in texts:
        bare = " ".join(f"`{m.group(0).rstrip('.')}`" for m in BARE_DOTTED.finditer(SPAN.sub(" ", text)))
        yield text + "\n" + bare


def problems() -> list[str]:
    found = []
    documents = [(p, [p.read_text()]) for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]]
    documents += [(p, list(docstrings(p))) for p in python_files()]
    for document, texts in documents:
        for text in texts:
            for reference, kind in references(text):
                problem = dotted_problem(reference) if kind == "dotted" else file_problem(reference, document)
                if problem:
                    found.append(f"{document.relative_to(ROOT)}: `{reference}`: {problem}")
    return sorted(set(found))


def test_every_reference_in_the_docs_and_docstrings_exists():
    assert problems() == []


def test_the_check_finds_a_stale_module_path_a_missing_function_and_a_missing_file(tmp_path):
    text = "See `conversations.pg`, `selectors.no_such_function`, `infrastructure/no-such.sh`, `os.environ`."
    found = [
        (ref, dotted_problem(ref) if kind == "dotted" else file_problem(ref, tmp_path))
        for ref, kind in references(text)
    ]
    assert [(ref, problem is not None) for ref, problem in found] == [
        ("conversations.pg", True),
        ("selectors.no_such_function", True),
        ("infrastructure/no-such.sh", True),
        ("os.environ", False),
    ]
