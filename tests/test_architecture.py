"""The layers stay apart: the engine knows nothing of HTTP or storage, the store nothing of HTTP or losses."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVICE = Path(__file__).resolve().parent.parent / "service"
FORBIDDEN = {
    "engine": (
        "fastapi",
        "starlette",
        "pydantic",
        "prometheus_client",
        "service.api",
        "service.store",
        "service.monitoring",
    ),
    "store": ("fastapi", "starlette", "prometheus_client", "service.api", "service.engine", "service.monitoring"),
}


# Modules below more than one transport: the Open Inference Protocol's codec serves HTTP and gRPC.
TRANSPORT_FREE = {"api/oip_codec.py": ("fastapi", "starlette", "grpc", "service.grpc", "service.api.routes")}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_nothing_above_it(package: str) -> None:
    files = sorted((SERVICE / package).rglob("*.py"))
    assert files
    for path in files:
        for name in imported_modules(path):
            assert not name.startswith(FORBIDDEN[package]), f"{path.relative_to(SERVICE)} imports {name}"


@pytest.mark.parametrize("module", sorted(TRANSPORT_FREE))
def test_a_module_below_the_transports_imports_none_of_them(module: str) -> None:
    for name in imported_modules(SERVICE / module):
        assert not name.startswith(TRANSPORT_FREE[module]), f"{module} imports {name}"
