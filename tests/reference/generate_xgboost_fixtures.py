"""Regenerate tests/fixtures/xgboost_reference.json from XGBoost.

.venv/bin/pip install xgboost && .venv/bin/python -m tests.reference.generate_xgboost_fixtures

The format, shared by the library conventions' fixtures (lightgbm_reference.json,
catboost_reference.json): {"library", "version", "cases": [{"metric" (as the library writes it),
"options", "margin", "predictions", "labels", "sample_weight" (or null), "expected" (the
library's recorded evaluation for the last iteration)}]}.
"""

from __future__ import annotations

import json
from pathlib import Path

import xgboost

from tests.reference.xgboost_cases import cases

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "xgboost_reference.json"


def main() -> None:
    records = cases()
    document = {"library": "xgboost", "version": xgboost.__version__, "cases": records}
    FIXTURE.write_text(json.dumps(document, separators=(",", ":")) + "\n")
    print(f"wrote {len(records)} cases to {FIXTURE} (xgboost {xgboost.__version__})")


if __name__ == "__main__":
    main()
