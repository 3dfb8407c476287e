"""The layers stay apart: the engine knows nothing of HTTP or storage, the store nothing of HTTP or
losses, the use cases nothing of HTTP or gRPC; the client nothing of the server or the offline code,
the offline code nothing but the engine, the CLI nothing of the HTTP layer. And the page that draws
them, docs/architecture.md,
lists every module from its docstring."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "service"
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
    # The use cases sit between the transports and engine, store and monitoring: they import
    # those below, never an HTTP or gRPC module nor a transport's framework.
    "usecases": ("fastapi", "starlette", "grpc", "service.api", "service.grpc", "service.app", "service.protocol"),
    "monitoring": ("fastapi", "service.api", "service.grpc", "service.usecases", "service.app"),
    # Below everything: values any room may hold.
    "values": ("service.", "fastapi", "starlette", "pydantic", "prometheus_client"),
}
SERVER = ("service.api", "service.app", "service.store", "service.monitoring", "service.grpc", "service.protocol")
SERVER += ("service.usecases", "service.server", "service.config")
SERVER += ("fastapi", "starlette", "uvicorn", "prometheus_client")
# Rooms by audience: what each may not import, function-level imports included.
ROOMS = {
    "client": (*SERVER, "service.offline", "service.engine", "service.option_models", "service.cli"),
    "offline": (*SERVER, "service.client", "service.cli"),
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


def within(name: str, modules: tuple[str, ...]) -> bool:
    """`name` is one of `modules` or inside one (service.client is not inside service.cli)."""
    return any(name == module or name.startswith(module + ".") for module in modules)


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_the_client_and_offline_rooms_import_nothing_of_the_server(room: str) -> None:
    files = sorted((SERVICE / room).rglob("*.py"))
    assert files
    for path in files:
        for name in imported_modules(path):
            assert not within(name, ROOMS[room]), f"{path.relative_to(SERVICE)} imports {name}"


def test_the_cli_imports_nothing_of_the_http_layer() -> None:
    names = imported_modules(SERVICE / "cli.py")
    assert "service.server.boot" in names  # seen: imports inside functions count
    assert not [name for name in names if within(name, ("service.api", "fastapi", "starlette", "uvicorn"))]


def test_the_client_loads_without_the_engine_or_the_server() -> None:
    """Importing the client costs no catalogue and no server: a fresh interpreter shows what it loads."""
    import subprocess
    import sys

    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, service.client; print(' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout.split()
    ours = [name for name in loaded if name.startswith("service")]
    assert not [name for name in ours if within(name, ROOMS["client"])], ours
    assert not [name for name in loaded if name.split(".")[0] in ("fastapi", "starlette", "pydantic", "uvicorn")]


@pytest.mark.parametrize("module", sorted(TRANSPORT_FREE))
def test_a_module_below_the_transports_imports_none_of_them(module: str) -> None:
    for name in imported_modules(SERVICE / module):
        assert not name.startswith(TRANSPORT_FREE[module]), f"{module} imports {name}"


def docs_hooks() -> ModuleType:
    """docs/hooks.py, loaded as mkdocs loads it: by its path."""
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def module_name(path: Path) -> str:
    """How the module table names a file: its path, a package by its folder."""
    name = path.relative_to(ROOT).as_posix()
    return name.removesuffix("__init__.py") if path.name == "__init__.py" else name


def test_the_architecture_page_lists_every_module_with_its_docstring() -> None:
    """Every module of service/ has a docstring, and docs/architecture.md as the docs hook writes
    it has one row per module, which begins with the docstring's first words."""
    page = docs_hooks().on_page_markdown((ROOT / "docs" / "architecture.md").read_text(), page=None)
    assert "<!-- modules -->" not in page
    cells = [line.split(" | ", 1) for line in page.splitlines() if line.startswith("| `service/")]
    rows = {name.strip("| `"): text for name, text in cells}
    files = sorted(SERVICE.rglob("*.py"))
    assert len(rows) == len(cells) == len(files)
    for path in files:
        docstring = ast.get_docstring(ast.parse(path.read_text()))
        assert docstring, f"{path.relative_to(ROOT)} has no docstring for docs/architecture.md"
        name = module_name(path)
        assert name in rows, f"{name} is missing from the module table of docs/architecture.md"
        assert rows[name].startswith(" ".join(docstring.split("\n\n")[0].split()[:4])), name


def test_a_module_without_a_docstring_stops_the_docs_build(tmp_path: Path) -> None:
    package = tmp_path / "service"
    (package / "api").mkdir(parents=True)
    (package / "__init__.py").write_text('"""The package."""\n')
    (package / "api" / "__init__.py").write_text('"""Its HTTP layer."""\n')
    (package / "api" / "silent.py").write_text("VALUE = 1\n")
    with pytest.raises(ValueError, match=r"service/api/silent\.py"):
        docs_hooks().module_table(package)
    (package / "api" / "silent.py").write_text('"""It speaks.\n\nMore than the table shows."""\n')
    assert docs_hooks().module_table(package).splitlines()[2:] == [
        "| `service/` | The package. |",
        "| `service/api/` | Its HTTP layer. |",
        "| `service/api/silent.py` | It speaks. |",
    ]
