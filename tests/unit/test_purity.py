"""The pure core stays pure: no I/O frameworks, no clock, no randomness (checked by parsing)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = sorted((ROOT / "scheduler").rglob("*.py"))
SCHEMAS = sorted((ROOT / "schemas").rglob("*.py"))

FORBIDDEN_IMPORTS = {
    "asyncio",
    "faust",
    "aiokafka",
    "pymongo",
    "motor",
    "fastapi",
    "random",
    "secrets",
    "time",
}
SCHEMAS_MAY_IMPORT = {
    "pydantic",
    "pydantic_core",
    "orjson",
    "croniter",
    "zoneinfo",
    "cryptography",  # schemas/secrets.py: the AEAD of sensitive fields
    "schemas",
    "__future__",
    # stdlib
    "base64",
    "binascii",
    "os",  # os.urandom: the nonces of schemas/secrets.py
    "collections",
    "contextlib",
    "dataclasses",
    "datetime",
    "enum",
    "hashlib",
    "hmac",  # schemas/notifications.py: webhook signatures
    "json",
    "pathlib",
    "re",
    "sys",
    "typing",
    "urllib",  # urllib.parse only: pure URL parsing
    "uuid",
}
# Calls that read the clock or a random source, spelled as attribute chains.
FORBIDDEN_CALLS = {
    "datetime.now",
    "datetime.utcnow",
    "datetime.today",
    "date.today",
    "datetime.datetime.now",
    "datetime.datetime.utcnow",
    "time.time",
    "time.monotonic",
    "time.perf_counter",
    "time.time_ns",
    "uuid.uuid1",
    "uuid.uuid4",
    "os.urandom",
}


def imported_roots(tree: ast.AST) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def forbidden_calls(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and (name := dotted(node.func)) is not None:
            if name in FORBIDDEN_CALLS or name.split(".")[-1] in {"now", "utcnow", "urandom"}:
                found.append(f"{name} (line {node.lineno})")
            if name.split(".")[0] == "random":
                found.append(f"{name} (line {node.lineno})")
    return found


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_core_imports_nothing_impure(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    assert imported_roots(tree) & FORBIDDEN_IMPORTS == set()


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_core_never_reads_the_clock_or_randomness(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    assert forbidden_calls(tree) == []


@pytest.mark.parametrize("path", SCHEMAS, ids=lambda p: p.name)
def test_schemas_import_only_the_allowed_libraries(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    assert imported_roots(tree) - SCHEMAS_MAY_IMPORT == set()


def test_the_checker_catches_violations() -> None:
    bad = ast.parse(
        "import asyncio\nfrom datetime import datetime\nimport random\n"
        "x = datetime.now()\ny = random.random()\nimport time\nz = time.time()\n"
    )
    assert imported_roots(bad) & FORBIDDEN_IMPORTS == {"asyncio", "random", "time"}
    assert len(forbidden_calls(bad)) == 3


def test_core_modules_found() -> None:
    assert {p.name for p in CORE} >= {"decider.py", "schedule.py", "state.py", "retry.py", "__init__.py"}
