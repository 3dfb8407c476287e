"""The rooms stay apart and their imports point down: the server (app, HTTP layer, gRPC,
monitoring, boot) above the use cases, the use cases above the engine and the store, the values
below everything; the client and the offline code beside them, importing nothing of the server;
the CLI on top, importing nothing of the HTTP layer. And the page that draws them,
docs/architecture.md, lists every module from its docstring."""

from __future__ import annotations

import ast
import graphlib
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "service"

# Each room and the rooms it may import (imports within a room are its own business). The order
# they make is checked to be a ranking, so that every arrow points down.
MAY_IMPORT: dict[str, tuple[str, ...]] = {
    "service.cli": (
        "service.server",
        "service.client",
        "service.offline",
        "service.option_models",
        "service.engine",
        "service.config",
        "service.values",
        "service",
    ),
    "service.server": (
        "service.usecases",
        "service.option_models",
        "service.engine",
        "service.store",
        "service.config",
        "service.values",
        "service",
    ),
    "service.usecases": ("service.engine", "service.store", "service.config", "service.values"),
    "service.datasets": ("service.offline",),  # the documented import paths of the offline room
    "service.files": ("service.offline",),
    "service.offline": ("service.engine", "service.values"),
    "service.client": ("service.values",),
    "service.option_models": ("service.engine", "service.values"),
    "service.engine": ("service.values",),
    "service.store": ("service.values",),
    "service.config": (),
    "service.values": (),
    "service": (),  # the package itself: its version
}

# Frameworks a room may not import (function-level imports included): the engine is pure NumPy,
# the store SQL, the use cases know no transport, the client and offline rooms no server framework.
SERVER_FRAMEWORKS = ("fastapi", "starlette", "uvicorn", "prometheus_client", "grpc")
FRAMEWORKS: dict[str, tuple[str, ...]] = {
    "service.engine": (*SERVER_FRAMEWORKS, "pydantic"),
    "service.store": SERVER_FRAMEWORKS,
    "service.usecases": SERVER_FRAMEWORKS,
    "service.client": (*SERVER_FRAMEWORKS, "pydantic"),
    "service.offline": SERVER_FRAMEWORKS,
    "service.values": (*SERVER_FRAMEWORKS, "pydantic"),
}

# Inside the server: monitoring sits below the HTTP layer and gRPC, and the Open Inference
# Protocol's codec below both transports (it serves HTTP and gRPC).
WITHIN_SERVER = {
    "server/monitoring": (
        "fastapi",
        "service.server.api",
        "service.server.grpc",
        "service.server.app",
        "service.usecases",
    ),
    "server/api/oip_codec.py": ("fastapi", "starlette", "grpc", "service.server.grpc", "service.server.api.routes"),
}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def within(name: str, modules: tuple[str, ...]) -> bool:
    """`name` is one of `modules` or inside one (service.client is not inside service.cli)."""
    return any(name == module or name.startswith(module + ".") for module in modules)


def room_of(module: str) -> str | None:
    """The room a module of the package stands in: the longest room name that holds it (the room
    `service` holds the package's own `__init__.py` alone)."""
    rooms = [room for room in MAY_IMPORT if within(module, (room,)) and (room != "service" or module == room)]
    return max(rooms, key=len) if rooms else None


def arrows_against_the_rules(root: Path) -> list[str]:
    """Every import under `root`/service that points up, sideways into a room it may not enter, or
    at a framework its room keeps out; and every file that stands in no room."""
    found: list[str] = []
    for path in sorted((root / "service").rglob("*.py")):
        module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        room = room_of(module)
        if room is None:
            found.append(f"{module} stands in no room")
            continue
        for name in sorted(imported_modules(path)):
            target = room_of(name) if within(name, ("service",)) else None
            if target is not None and target != room and target not in MAY_IMPORT[room]:
                found.append(f"{module} imports {name}: {room} may not import {target}")
            if within(name, FRAMEWORKS.get(room, ())):
                found.append(f"{module} imports {name}: {room} keeps it out")
    return found


def test_the_rooms_rank_so_that_every_arrow_points_down() -> None:
    order = list(graphlib.TopologicalSorter(MAY_IMPORT).static_order())  # CycleError on a circle
    assert set(order) == set(MAY_IMPORT)
    assert not set(MAY_IMPORT["service.client"]) & {"service.server", "service.offline", "service.engine"}
    assert "service.server" not in MAY_IMPORT["service.offline"]
    assert "service.server" not in MAY_IMPORT["service.usecases"]


def test_every_import_of_the_package_follows_the_rooms() -> None:
    assert arrows_against_the_rules(ROOT) == []


def test_an_arrow_planted_upward_is_found(tmp_path: Path) -> None:
    """The check reads the files it is given: an upward import planted in a copy is reported."""
    plant = {
        "service/__init__.py": '"""The package."""\n',
        "service/engine/__init__.py": '"""The engine."""\nfrom service.values import text\n',
        "service/usecases/planted.py": '"""Up."""\nfrom service.server.monitoring import Monitor\n',
        "service/client/planted.py": '"""Sideways."""\n\ndef f():\n    import service.offline.files\n',
        "service/store/planted.py": '"""A framework."""\nimport fastapi\n',
        "service/attic.py": '"""Nowhere."""\n',
    }
    for name, text in plant.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert arrows_against_the_rules(tmp_path) == [
        "service.attic stands in no room",
        "service.client.planted imports service.offline.files: service.client may not import service.offline",
        "service.store.planted imports fastapi: service.store keeps it out",
        "service.usecases.planted imports service.server.monitoring: service.usecases may not import service.server",
    ]


@pytest.mark.parametrize("place", sorted(WITHIN_SERVER))
def test_inside_the_server_monitoring_and_the_oip_codec_import_nothing_above_them(place: str) -> None:
    path = SERVICE / place
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
    assert files
    for file in files:
        for name in imported_modules(file):
            assert not within(name, WITHIN_SERVER[place]), f"{file.relative_to(SERVICE)} imports {name}"


def test_the_cli_imports_nothing_of_the_http_layer() -> None:
    names = set().union(*(imported_modules(path) for path in (SERVICE / "cli").rglob("*.py")))
    assert "service.server.boot" in names  # seen: imports inside functions count
    assert not [name for name in names if within(name, ("service.server.api", *SERVER_FRAMEWORKS))]


def test_the_client_loads_without_the_engine_or_the_server() -> None:
    """Importing the client costs no catalogue and no server: a fresh interpreter shows what it loads."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, service.client; print(' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout.split()
    ours = [name for name in loaded if name.startswith("service")]
    assert not [name for name in ours if within(name, ("service.server", "service.engine", "service.offline"))], ours
    assert not [name for name in loaded if name.split(".")[0] in ("fastapi", "starlette", "pydantic", "uvicorn")]


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
