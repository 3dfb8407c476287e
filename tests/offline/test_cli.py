"""`loss-service compute`, `losses`, `openapi` and `--version`: outputs and exit codes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from service import __version__
from service.cli import main
from tests.reference import naive
from tests.servers import served

RNG = np.random.default_rng(9)
LOGITS = RNG.normal(0, 2, (40, 3))
LABELS = RNG.integers(0, 3, 40)
# From the naive float64 reference, not from the engine the CLI runs.
EXPECTED_PER_SAMPLE, EXPECTED_MEAN = naive.scce(LOGITS.tolist(), LABELS.tolist(), "torch", from_logits=True)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    np.save(tmp_path / "p.npy", LOGITS)
    np.save(tmp_path / "y.npy", LABELS)
    np.savez(tmp_path / "batch.npz", predictions=LOGITS, labels=LABELS)
    np.savetxt(tmp_path / "p.csv", LOGITS, delimiter=",", header="a,b,c", comments="", fmt="%.17g")
    np.savetxt(tmp_path / "y.csv", LABELS, delimiter=",", fmt="%d")
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(row) for row in LOGITS.tolist()))
    pq.write_table(pa.table({"a": LOGITS[:, 0], "b": LOGITS[:, 1], "c": LOGITS[:, 2]}), tmp_path / "p.parquet")
    pq.write_table(pa.table({"y": LABELS}), tmp_path / "y.parquet")
    return {p.name: p for p in tmp_path.iterdir()}


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("predictions", "labels"),
    [
        ("p.npy", "y.npy"),
        ("batch.npz", "batch.npz"),
        ("p.csv", "y.csv"),
        ("p.jsonl", "y.npy"),
        ("p.parquet", "y.parquet"),
    ],
)
def test_compute_reads_every_file_type(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], predictions: str, labels: str
) -> None:
    code, out, _ = run(
        capsys,
        "compute", "--loss", "scce", "--predictions", str(files[predictions]), "--labels", str(files[labels]),
        "--option", "from_logits=true", "--convention", "torch", "--json",
    )  # fmt: skip
    assert code == 0
    result = json.loads(out)
    np.testing.assert_allclose(result["per_sample"], EXPECTED_PER_SAMPLE, rtol=1e-12)
    assert result["mean"] == pytest.approx(EXPECTED_MEAN, rel=1e-12)


@pytest.mark.parametrize("suffix", [".npy", ".csv", ".jsonl", ".json"])
def test_compute_writes_per_sample_losses(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    out = tmp_path / f"losses{suffix}"
    code, table, _ = run(
        capsys, "compute", "--loss", "scce", "--predictions", str(files["p.npy"]), "--labels", str(files["y.npy"]),
        "--option", "from_logits=true", "--convention", "torch", "--out", str(out),
    )  # fmt: skip
    assert code == 0
    assert "mean" in table
    assert "(30 more)" in table
    if suffix == ".npy":
        written = np.load(out)
    elif suffix == ".csv":
        written = np.loadtxt(out, delimiter=",")
    elif suffix == ".jsonl":
        written = np.array([json.loads(line) for line in out.read_text().splitlines()])
    else:
        written = np.array(json.loads(out.read_text()))
    np.testing.assert_allclose(written, EXPECTED_PER_SAMPLE, rtol=1e-12)


def test_exit_codes(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["compute", "--loss", "scce", "--predictions", str(files["p.npy"]), "--labels", str(files["y.npy"])]
    assert run(capsys, *base, "--option", "from_logits=true")[0] == 0
    code, _, err = run(capsys, *base, "--option", "from_logits=perhaps")
    assert (code, "options.from_logits" in err) == (3, True)
    code, _, err = run(capsys, *base[:2], "nope", *base[3:])
    assert (code, "unknown loss 'nope'" in err) == (3, True)
    code, _, err = run(capsys, *base[:4], str(files["p.npy"]), "--labels", str(files["p.npy"]))
    assert (code, "class labels must be integers" in err) == (3, True)
    code, _, err = run(capsys, *base, "--url", "http://127.0.0.1:1")
    assert (code, "Connection refused" in err) == (4, True)
    code, _, err = run(capsys, *base[:4], str(tmp_path / "missing.npy"), "--labels", str(files["y.npy"]))
    assert (code, "no such file" in err) == (2, True)
    code, _, err = run(capsys, *base, "--option", "from_logits=true", "--out", str(tmp_path / "x.xlsx"))
    assert (code, "cannot write .xlsx" in err) == (2, True)
    code, _, err = run(capsys, "compute", "--loss", "mse")
    assert (code, "needs --predictions and --labels, or --dataset" in err) == (2, True)
    with pytest.raises(SystemExit) as usage:
        main(["compute", "--predictions", "p.npy"])  # no --loss: argparse's own usage error
    assert usage.value.code == 2


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with served() as base:
        yield base


@pytest.mark.slow
def test_compute_through_the_service_matches_local(
    files: dict[str, Path], url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["compute", "--loss", "scce", "--predictions", str(files["p.npy"]), "--labels", str(files["y.npy"]),
            "--option", "from_logits=true", "--convention", "torch", "--json"]  # fmt: skip
    local = json.loads(run(capsys, *args)[1])
    code, out, _ = run(capsys, *args, "--url", url, "--chunk-size", "16", "--model", "cli-test")
    assert code == 0
    remote = json.loads(out)
    assert remote["per_sample"] == local["per_sample"]
    assert remote["mean"] == pytest.approx(local["mean"], rel=1e-14)
    code, _, err = run(capsys, *args[:-1], "--url", url, "--option", "label_smoothing=2")
    assert code == 3
    assert "label_smoothing" in err


def test_losses_openapi_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "losses")
    assert code == 0
    assert "sparse_categorical_crossentropy (scce" in out
    assert "--option ignore_index=" in out
    code, out, _ = run(capsys, "openapi")
    assert json.loads(out)["info"]["title"] == "loss-service"
    with pytest.raises(SystemExit) as version:
        main(["--version"])
    assert version.value.code == 0
    assert __version__ in capsys.readouterr().out


@pytest.mark.slow
def test_the_key_may_come_from_the_environment_not_the_command_line(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key given as --api-key shows in every process list; LOSS_SERVICE_API_KEY does not."""
    args = ["compute", "--loss", "mse", "--predictions", str(files["p.npy"]), "--labels", str(files["p.npy"])]
    with served(env={"LOSS_SERVICE_API_KEYS": "cli-key"}) as url:
        monkeypatch.delenv("LOSS_SERVICE_API_KEY", raising=False)
        code, _, err = run(capsys, *args, "--url", url)
        assert (code, "401" in err) == (1, True)
        monkeypatch.setenv("LOSS_SERVICE_API_KEY", "cli-key")
        assert run(capsys, *args, "--url", url)[0] == 0


def test_starting_clears_only_metrics_files_from_the_metrics_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.server.boot import prepare_metrics_dir

    # It points PROMETHEUS_MULTIPROC_DIR at the directory; later tests' apps must not inherit that.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "unset by monkeypatch at the end")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")

    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "counter_1.db").write_bytes(b"x")
    for stale in ("counter_12.db", "gauge_livesum_12.db", "histogram_12.db"):
        (tmp_path / stale).write_bytes(b"x")
    prepare_metrics_dir(tmp_path)
    left = sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*"))
    assert left == ["notes.txt", "sub", "sub/counter_1.db"]
