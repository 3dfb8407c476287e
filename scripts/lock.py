"""Regenerate requirements.lock: the runtime dependencies of pyproject.toml, pinned with hashes.

    make lock      (runs: uv pip compile --universal --generate-hashes, then stamps the header)

The first line records a digest of pyproject's [project] dependencies, so the test suite can tell,
without a network, whether the lock was made from the dependencies pyproject declares today.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
STAMP = "# pyproject-dependencies-sha256: "


def dependencies_digest() -> str:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return hashlib.sha256("\n".join(sorted(dependencies)).encode()).hexdigest()


def main() -> None:
    compiled = subprocess.run(
        [
            sys.executable,
            "-m",
            "uv",
            "pip",
            "compile",
            str(ROOT / "pyproject.toml"),
            "--universal",
            "--generate-hashes",
            "--python-version",
            "3.11",
            "--no-header",
            "--quiet",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    LOCK.write_text(f"{STAMP}{dependencies_digest()}\n# regenerate with: make lock\n{compiled}")
    print(f"wrote {LOCK}")


if __name__ == "__main__":
    main()
