"""Every curl example in the README and the docs, replayed against the app: the printed output
must be the answer. And the docs site builds, strictly."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
PAGES = {"README.md": README} | {f"docs/{page.name}": page.read_text() for page in sorted((ROOT / "docs").glob("*.md"))}
EXAMPLE = re.compile(
    r"^\$ curl -s (?:-X (?P<method>POST|PUT) )?localhost:8000(?P<path>\S+)"
    r"(?: -H '(?P<header>[^']*)')?(?: -d '(?P<body>[^']*)')?\n(?P<output>\{.*\})$",
    re.MULTILINE,
)
# Replayed under the clock its comments set, by tests/api/test_monitoring_guide.py.
CLOCKED = {"docs/monitoring-over-time.md", "docs/estimates.md"}
EXAMPLES = [
    {**m.groupdict(), "page": page}
    for page, text in PAGES.items()
    if page not in CLOCKED
    for m in EXAMPLE.finditer(text)
]


def test_the_readme_and_the_docs_have_curl_examples() -> None:
    assert len([e for e in EXAMPLES if e["page"] == "README.md"]) >= 3
    assert len(EXAMPLES) >= 10


@pytest.mark.anyio
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: f"{e['page']}: {e['method'] or 'GET'} {e['path']}")
async def test_readme_example_output_is_what_the_service_answers(
    client: httpx.AsyncClient, example: dict[str, str]
) -> None:
    if example["method"] in ("POST", "PUT"):
        name, _, value = (example["header"] or "content-type: application/json").partition(":")
        response = await client.request(
            example["method"], example["path"], content=example["body"], headers={name.strip(): value.strip()}
        )
    else:
        response = await client.get(example["path"])
    expected = json.loads(example["output"])
    assert_same_answer(response.json(), expected, FLOAT32_RTOL if "float32" in example["output"] else FLOAT64_RTOL)


# NumPy's float32 exp/log1p take other SIMD code on AVX-512 than on AVX2 or NEON and can land an
# ulp or two apart, so a printed float32 number is matched within 2 ulp, float64 within 1e-12.
FLOAT32_RTOL = 2.0**-22
FLOAT64_RTOL = 1e-12


# Times of day differ from run to run: only their type is compared.
VOLATILE = {"created_at", "updated_at", "oldest_pending_seconds"}
# A quota's usage counts every model of the store the suite shares: only its type is compared.
VOLATILE_COUNTS = {"used"}


def assert_same_answer(actual: object, expected: object, rtol: float, where: str = "") -> None:
    """Equal structure and every non-number equal; numbers within `rtol` of the printed ones.
    (The delayed-labels examples run in order against one store: each builds on the one before.)"""
    if where.rsplit(".", 1)[-1] in VOLATILE:
        assert isinstance(actual, float), where
        return
    if where.rsplit(".", 1)[-1] in VOLATILE_COUNTS:
        assert isinstance(actual, int), where
        return
    if isinstance(expected, dict):
        assert isinstance(actual, dict), where
        assert actual.keys() == expected.keys(), where
        for key in expected:
            assert_same_answer(actual[key], expected[key], rtol, f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list), where
        assert len(actual) == len(expected), where
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same_answer(a, e, rtol, f"{where}[{index}]")
    elif isinstance(expected, float) and not isinstance(expected, bool):
        assert isinstance(actual, float), where
        assert math.isclose(actual, expected, rel_tol=rtol, abs_tol=rtol), f"{where}: {actual!r} != {expected!r}"
    else:
        assert type(actual) is type(expected), where
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def test_every_setting_has_a_description_for_the_generated_table() -> None:
    from service.config import Settings

    assert [name for name, field in Settings.model_fields.items() if not field.description] == []


def test_the_docs_site_builds_strictly_with_generated_pages(tmp_path: Path) -> None:
    """`mkdocs build --strict`: a broken link, a page missing from the nav or a failing hook fails
    here. The catalogue, the settings table and the module table are generated from the code."""
    from service.config import Settings
    from service.engine import catalogue

    mkdocs = Path(sys.executable).parent / "mkdocs"
    result = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    losses = (tmp_path / "site" / "losses" / "index.html").read_text()
    for spec in catalogue():
        assert f"<code>{spec.name}</code>" in losses, spec.name
    settings = (tmp_path / "site" / "configuration" / "index.html").read_text()
    for name in Settings.model_fields:
        assert f"LOSS_SERVICE_{name.upper()}" in settings, name
    assert "&lt;!-- catalogue --&gt;" not in losses
    architecture = (tmp_path / "site" / "architecture" / "index.html").read_text()
    for path in (ROOT / "service").rglob("*.py"):
        name = path.relative_to(ROOT).as_posix().removesuffix("__init__.py")
        assert f"<td><code>{name}</code></td>" in architecture, name
    assert "&lt;!-- modules --&gt;" not in architecture
    conventions = (tmp_path / "site" / "conventions" / "index.html").read_text()
    from service.engine import libraries

    for metric in libraries.metrics():  # every library's table, generated from the engine
        assert f"<strong><code>{metric.name}</code></strong>" in conventions, metric.name


def test_the_readme_is_a_front_page() -> None:
    assert README.count("\n") <= 200
    for link in re.findall(r"\]\((docs/[^)#]+)", README):
        assert (ROOT / link).is_file(), link
