"""In CI (`CI` set) an unexpected skip fails the run; elsewhere it is only reported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SKIPPING = """
import pytest

def test_runs():
    pass

def test_needs_a_binary():
    pytest.skip("frobnicate is not installed")
"""


@pytest.mark.parametrize(("ci", "status"), [("", 0), ("true", 1)])
def test_a_skip_fails_the_run_only_in_ci(tmp_path: Path, ci: str, status: int) -> None:
    (tmp_path / "test_sample.py").write_text(SKIPPING)
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    if ci:
        env["CI"] = ci
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == status, run.stdout + run.stderr
    if ci:
        assert "1 unexpected skips in CI" in run.stdout
        assert "test_needs_a_binary: Skipped: frobnicate is not installed" in run.stdout
