"""MkDocs hooks: the pages that must not drift from the code are written from it at build time.

- losses.md: the catalogue, from the engine's registry (`service.engine.catalogue`).
- configuration.md: every setting, from `service.config.Settings`.
- architecture.md: every module of `service/`, from its docstring's first paragraph.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

CATALOGUE_MARKER = "<!-- catalogue -->"
LIBRARIES_MARKER = "<!-- library-metrics -->"
SETTINGS_MARKER = "<!-- settings -->"
MODULES_MARKER = "<!-- modules -->"
SERVICE = Path(__file__).resolve().parent.parent / "service"


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if CATALOGUE_MARKER in markdown:
        markdown = markdown.replace(CATALOGUE_MARKER, _catalogue())
    if LIBRARIES_MARKER in markdown:
        markdown = markdown.replace(LIBRARIES_MARKER, _library_metrics())
    if SETTINGS_MARKER in markdown:
        markdown = markdown.replace(SETTINGS_MARKER, _settings())
    if MODULES_MARKER in markdown:
        markdown = markdown.replace(MODULES_MARKER, module_table())
    return markdown


def _cell(text: object) -> str:
    # A pipe would end the table cell, escaped or not inside a code span: unions read "or".
    return str(text).replace(" | ", " or ").replace("|", "/").replace("\n", " ")


def _catalogue() -> str:
    from service.engine import catalogue

    parts = []
    for spec in catalogue():
        aliases = f" ({', '.join(f'`{alias}`' for alias in spec.aliases)})" if spec.aliases else ""
        parts.append(f"## `{spec.name}`{aliases}\n\n{spec.summary}\n")
        parts.append(f"```text\n{spec.formula}\n```\n")
        parts.append(f"**Shapes.** {spec.shapes}\n".replace("\n", "  \n", spec.shapes.count("\n")))
        parts.append(f"**Follows.** {spec.follows}\n")
        if spec.expected is not None:
            parts.append(f"**Expected loss** (`expected_loss`):\n\n```text\n{spec.expected_formula}\n```\n")
        if spec.options:
            rows = ["| option | type | default | range | applies | meaning |", "|---|---|---|---|---|---|"]
            for option in spec.options:
                name = f"`{option.name}`" + (f" (also `{'`, `'.join(option.aliases)}`)" if option.aliases else "")
                rows.append(
                    f"| {name} | `{_cell(option.type_name())}` | `{_cell(option.default)}` | "
                    f"{_cell(option.range.describe()) if option.range else ''} | {option.only_under or 'both'} | "
                    f"{_cell(option.doc)} |"
                )
            parts.append("\n".join(rows) + "\n")
        else:
            parts.append("No options.\n")
    return "\n".join(parts)


def _library_metrics() -> str:
    from service.engine import LIBRARIES, libraries

    parts = []
    for library in LIBRARIES:
        table = libraries.metrics(library)
        if not table:
            continue
        parts.append(f'### {libraries.LIBRARY_TITLES[library]} (`"convention": "{library}"`)\n')
        rows = [
            "| metric | catalogue loss | mean | margin: link | options | precision |",
            "|---|---|---|---|---|---|",
        ]
        for m in table:
            name = ", ".join(f"`{form}`" for form in m.forms())
            if m.aliases:
                name += " (also " + ", ".join(f"`{a}`" for a in m.aliases) + ")"
            options = ", ".join(f"`{o.name}` ({_cell(o.default)})" for o in m.spec.options if o.name != "margin")
            mean = {"root_mean": "sqrt(sum(w l) / sum(w))", "sum": "sum(w l)"}.get(m.aggregate, "sum(w l) / sum(w)")
            rows.append(
                f"| {name} | {f'`{m.loss}`' if m.loss else 'none'} | {mean} | {_cell(m.link)} | "
                f"{options or '-'} | {_cell(m.precision)} |"
            )
        parts.append("\n".join(rows) + "\n")
        for m in table:
            parts.append(f"**`{m.name}`**: {m.spec.summary}\n\n```text\n{m.spec.formula}\n```\n")
    return "\n".join(parts)


def _settings() -> str:
    from service.config import Settings

    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = ",".join(str(item) for item in default) if isinstance(default, list) else default
        rows.append(f"| `LOSS_SERVICE_{name.upper()}` | `{_cell(shown)}` | {_cell(field.description or '')} |")
    return "\n".join(rows) + "\n"


def module_table(package: Path = SERVICE) -> str:
    """A row per module of `package`, a package by its folder (its `__init__.py`), in path order:
    the path from the package's parent and the first paragraph of the module's docstring. A module
    without a docstring stops the build, naming it."""
    rows, missing = [], []
    for path in sorted(package.rglob("*.py")):
        name = path.relative_to(package.parent).as_posix()
        if path.name == "__init__.py":
            name = name.removesuffix("__init__.py")
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        if not docstring:
            missing.append(name)
            continue
        summary = " ".join(docstring.split("\n\n")[0].split())  # the first paragraph, on one line
        rows.append(f"| `{name}` | {_cell(summary)} |")
    if missing:
        raise ValueError(f"modules without a docstring (docs/architecture.md lists each): {', '.join(missing)}")
    return "\n".join(["| module | what it does |", "|---|---|", *rows]) + "\n"
