"""docs/security.md's attack table names, for each bound, the tests that prove it: each named test
exists, so the table cannot point at a test that was renamed or removed."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Attacks and what holds them"


def named_tests() -> list[tuple[str, str]]:
    """(file, test) for every `room/file.py::name` in the table (a path under tests/); `::name` alone
    means the same file."""
    text = (ROOT / "docs" / "security.md").read_text()
    table = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    found = []
    for row in (line for line in table.splitlines() if line.startswith("| ")):
        last_file = None
        for file, name in re.findall(r"`((?:\w+/)?test_\w+\.py)?::(\w+)", row.split(" | ")[-1]):
            last_file = file or last_file
            assert last_file is not None, f"{name}: no file named before it in {row[:80]}"
            found.append((last_file, name))
    return found


def test_the_attack_table_names_tests_that_exist() -> None:
    tests = named_tests()
    assert len(tests) >= 40
    missing = [
        f"{file}::{name}"
        for file, name in tests
        if not (ROOT / "tests" / file).is_file()
        or not re.search(rf"^(async )?def {name}\(", (ROOT / "tests" / file).read_text(), re.MULTILINE)
    ]
    assert not missing, missing


def scope_table() -> dict[str, set[str]]:
    """docs/security.md's scope table: scope -> the routes it lists (`METHOD /path`)."""
    text = (ROOT / "docs" / "security.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| (.+) \|$", text, re.MULTILINE)
    return {scope: set(re.findall(r"`([A-Z]+ /[^`]*)`", routes)) for scope, routes in rows}


def test_the_scope_table_lists_every_route_under_the_scope_its_policy_declares() -> None:
    from service.config import Settings
    from service.server.api.routing import policy_of
    from service.server.app import create_app

    declared: dict[str, set[str]] = {}
    for route in create_app(Settings()).routes:
        scope = policy_of(route).scope
        methods = getattr(route, "methods", None) or set()
        if scope is not None and scope != "metrics":
            declared.setdefault(scope, set()).update(f"{m} {route.path}" for m in methods if m != "HEAD")
    table = scope_table()
    assert {scope: table.get(scope, set()) for scope in declared} == declared
