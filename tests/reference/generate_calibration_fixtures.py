"""Regenerate tests/fixtures/calibration_reference.json from TorchMetrics.

.venv/bin/pip install torch==2.13.0 torchmetrics && .venv/bin/python -m tests.reference.generate_calibration_fixtures
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torchmetrics

from tests.reference.calibration_cases import cases, torchmetrics_reference

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "calibration_reference.json"


def main() -> None:
    torch.set_num_threads(1)
    records = [{**case, "expected": torchmetrics_reference(case)} for case in cases()]
    versions = {"torch": torch.__version__, "torchmetrics": torchmetrics.__version__}
    FIXTURE.write_text(json.dumps({**versions, "cases": records}, indent=1) + "\n")
    print(f"wrote {len(records)} cases to {FIXTURE} ({versions})")


if __name__ == "__main__":
    main()
