"""Every curl example in the README, replayed against the app: the printed output must be the answer."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import httpx
import pytest

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
EXAMPLE = re.compile(
    r"^\$ curl -s (?:-X (?P<method>POST|PUT) )?localhost:8000(?P<path>\S+)"
    r"(?: -H '[^']*')?(?: -d '(?P<body>[^']*)')?\n(?P<output>\{.*\})$",
    re.MULTILINE,
)
EXAMPLES = [m.groupdict() for m in EXAMPLE.finditer(README)]


def test_the_readme_has_curl_examples() -> None:
    assert len(EXAMPLES) >= 5


@pytest.mark.anyio
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: f"{e['method'] or 'GET'} {e['path']}")
async def test_readme_example_output_is_what_the_service_answers(
    client: httpx.AsyncClient, example: dict[str, str]
) -> None:
    if example["method"] in ("POST", "PUT"):
        response = await client.request(
            example["method"], example["path"], content=example["body"], headers={"content-type": "application/json"}
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


def assert_same_answer(actual: object, expected: object, rtol: float, where: str = "") -> None:
    """Equal structure and every non-number equal; numbers within `rtol` of the printed ones.
    (The delayed-labels examples run in order against one store: each builds on the one before.)"""
    if where.rsplit(".", 1)[-1] in VOLATILE:
        assert isinstance(actual, float), where
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


def test_the_configuration_table_lists_every_setting_with_its_default() -> None:
    from service.config import Settings

    rows = dict(re.findall(r"^\| `LOSS_SERVICE_(\w+)` \| ([^|]+) \|", README, re.MULTILINE))
    assert set(rows) == {name.upper() for name in Settings.model_fields}
    for name, field in Settings.model_fields.items():
        shown = rows[name.upper()].strip().split()[0].strip("`")
        if isinstance(field.default, str):
            assert shown == field.default, name
        elif isinstance(field.default, (int, float)) and not isinstance(field.default, bool):
            assert float(shown) == float(field.default), name
