"""Every curl example in the README, replayed against the app: the printed output must be the answer."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
EXAMPLE = re.compile(
    r"^\$ curl -s (?:-X (?P<method>POST) )?localhost:8000(?P<path>\S+)"
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
    if example["method"] == "POST":
        response = await client.post(
            example["path"], content=example["body"], headers={"content-type": "application/json"}
        )
    else:
        response = await client.get(example["path"])
    assert response.json() == json.loads(example["output"])


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
