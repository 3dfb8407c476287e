"""Regenerate tests/fixtures/torch_reference.json from PyTorch CPU.

.venv/bin/pip install torch==2.13.0 && .venv/bin/python -m tests.reference.generate_fixtures
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.reference.torch_cases import cases, torch_reductions

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "torch_reference.json"


def main() -> None:
    torch.set_num_threads(1)
    records = []
    for case in cases():
        per_sample, mean, total = torch_reductions(case)
        records.append({**case, "expected": {"per_sample": per_sample, "mean": mean, "sum": total}})
    FIXTURE.write_text(json.dumps({"torch": torch.__version__, "cases": records}, indent=1) + "\n")
    print(f"wrote {len(records)} cases to {FIXTURE} (torch {torch.__version__})")


if __name__ == "__main__":
    main()
