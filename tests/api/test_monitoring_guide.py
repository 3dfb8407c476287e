"""docs/monitoring-over-time.md and docs/estimates.md replayed in order, on SQLite and PostgreSQL,
under the clock their comments set (`<!-- clock: 2026-03-02T10:00:00Z -->` holds for the examples
after it): a week of delayed labels happens in a moment, and each printed answer must be what the
service answers.
(tests/project/test_readme.py replays the other pages' examples at the real time of day.)"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import pytest

from tests.api import test_history
from tests.project.test_readme import FLOAT64_RTOL, assert_same_answer

DOCS = Path(__file__).resolve().parents[2] / "docs"
GUIDE = DOCS / "monitoring-over-time.md"
GUIDES = [GUIDE, DOCS / "estimates.md"]
# test_readme's examples, with the URL in quotes where its query has an `&` the shell would take.
EXAMPLE = re.compile(
    r"^\$ curl -s (?:-X (?P<method>POST|PUT) )?(?P<quote>'?)localhost:8000(?P<path>[^\s']+)(?P=quote)"
    r"(?: -H '[^']*')?(?: -d '(?P<body>[^']*)')?\n(?P<output>\{.*\})$",
    re.MULTILINE,
)
CLOCK = re.compile(r"^<!-- clock: (?P<clock>\S+) -->$", re.MULTILINE)
# The history tests' app: the use cases read the test's clock, and no sweep runs by itself.
served = test_history.served


def steps(text: str) -> list[tuple[float, dict[str, str]]]:
    """Each example with the clock in force where it stands, in the guide's order."""
    clocks = [(m.start(), datetime.fromisoformat(m["clock"]).timestamp()) for m in CLOCK.finditer(text)]
    found = []
    for example in EXAMPLE.finditer(text):
        before = [clock for position, clock in clocks if position < example.start()]
        assert before, f"an example before the guide's first clock: {example['path']}"
        found.append((before[-1], {key: example[key] for key in ("method", "path", "body", "output")}))
    return found


def test_the_guide_has_a_week_of_examples() -> None:
    found = steps(GUIDE.read_text())
    assert len(found) >= 8
    assert found[-1][0] - found[0][0] >= 7 * 86400
    assert any("/history?" in example["path"] and "by=" in example["path"] for _, example in found)


@pytest.mark.parametrize("guide", GUIDES, ids=lambda path: path.name)
def test_the_guides_examples_answer_what_it_prints(served: test_history.Client, guide: Path) -> None:
    examples = steps(guide.read_text())
    assert len(examples) >= 4
    for clock, example in examples:
        served.clock.now = clock
        method = example["method"] or "GET"
        body = {"content": example["body"], "headers": {"content-type": "application/json"}} if example["body"] else {}
        response = served.request(method, example["path"], **body)
        assert response.status_code == 200, f"{method} {example['path']}: {response.text}"
        assert_same_answer(response.json(), json.loads(example["output"]), FLOAT64_RTOL, example["path"])


def test_a_clock_comment_sets_the_time_of_the_examples_after_it() -> None:
    text = (
        "<!-- clock: 2026-03-02T10:00:00Z -->\n$ curl -s localhost:8000/v1/models\n{}\n"
        "<!-- clock: 2026-03-03T10:00:00Z -->\n$ curl -s 'localhost:8000/v1/models/m/history?step=60&by=k'\n{}"
    )
    assert steps(text) == [
        (1772445600.0, {"method": None, "path": "/v1/models", "body": None, "output": "{}"}),
        (1772532000.0, {"method": None, "path": "/v1/models/m/history?step=60&by=k", "body": None, "output": "{}"}),
    ]
