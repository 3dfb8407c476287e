"""`loss-service compute` under misuse: outputs never overwrite inputs, never half-written, and
every bad argument or damaged file ends in exit 2 or 3 with one line on stderr (issue #29, 6 and 7)."""

from __future__ import annotations

import errno
import io
import json
import os
import random
import stat
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from service.cli import build_parser, main
from service.offline.cluster import evaluate_dask
from service.offline.datasets import evaluate_dataset
from service.offline.files import OutputError
from service.offline.spec import DEFAULT_MAX_GROUPS, DatasetError, Spec

RNG = np.random.default_rng(29)
ROWS = 40


def table(rows: int = ROWS, **extra: Any) -> pa.Table:
    rng = np.random.default_rng(29)  # the same table in every test, whichever run before it
    columns = {
        "logits": pa.FixedSizeListArray.from_arrays(pa.array(rng.normal(size=rows * 3)), 3),
        "label": rng.integers(0, 3, rows),
        "weight": rng.uniform(0.5, 1.5, rows),
        "country": rng.choice(["de", "fr"], rows),
    }
    return pa.table({**columns, **extra})


DATASET = ["compute", "--loss", "scce", "--option", "from_logits=true",
           "--predictions-column", "logits", "--labels-column", "label"]  # fmt: skip


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, list[str]]:
    """Exit code, stdout and stderr's lines; an exception (a traceback for the user) fails the test."""
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err.splitlines()


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- 6. an output never overwrites an input ----------------------------------------------------


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    pq.write_table(table(), folder / "a.parquet")
    pq.write_table(table(), folder / "sub" / "b.parquet")
    (tmp_path / "link-to-a.parquet").symlink_to(folder / "a.parquet")
    (tmp_path / "link-to-data").symlink_to(folder)
    os.link(folder / "a.parquet", tmp_path / "hard-a.parquet")
    return folder


OVERLAPS = {
    # name: (--dataset, --per-sample-out), relative to tmp_path
    "the input file itself": ("data/a.parquet", "data/a.parquet"),
    "the same file spelled differently": ("data/a.parquet", "data/sub/../a.parquet"),
    "a symbolic link to the input": ("data/a.parquet", "link-to-a.parquet"),
    "the input through a symbolic link": ("link-to-a.parquet", "data/a.parquet"),
    "a hard link to the input": ("data/a.parquet", "hard-a.parquet"),
    "a file of the dataset folder": ("data", "data/sub/b.parquet"),
    "a new file in the dataset folder": ("data", "data/per_sample.parquet"),
    "a new file deeper in the dataset folder": ("data", "data/sub/per_sample.parquet"),
    "the folder through a symbolic link": ("data", "link-to-data/per_sample.parquet"),
    "a file the glob matched": ("data/*.parquet", "data/a.parquet"),
    "a new file the glob would match": ("data/*.parquet", "data/per_sample.parquet"),
    "a new file a recursive glob would match": ("data/**/*.parquet", "data/per_sample.parquet"),
}


@pytest.mark.parametrize(("source", "output"), OVERLAPS.values(), ids=OVERLAPS.keys())
def test_an_output_that_is_or_is_inside_the_dataset_is_refused(
    dataset: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, source: str, output: str
) -> None:
    monkeypatch.chdir(dataset.parent)
    before = snapshot(dataset.parent)
    code, out, err = run(capsys, *DATASET, "--dataset", source, "--per-sample-out", output)
    assert (code, out, len(err)) == (2, "", 1), err
    assert "the output" in err[0]
    assert output in err[0]
    assert snapshot(dataset.parent) == before, "the dataset and everything beside it are untouched"
    with pytest.raises(OutputError, match="the output"):  # the Python API refuses it too
        evaluate_dataset(source, Spec("scce", "logits", "label", options={"from_logits": True}), per_sample_out=output)


def test_an_output_beside_the_dataset_is_written(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The refusal is not a blanket one: the sibling of a dataset file or folder is fine."""
    out = dataset.parent / "per_sample.parquet"
    code, _, err = run(capsys, *DATASET, "--dataset", str(dataset / "a.parquet"), "--per-sample-out", str(out))
    assert (code, err) == (0, [])
    assert pq.read_table(out).num_rows == ROWS


@pytest.fixture
def arrays(tmp_path: Path) -> Path:
    np.save(tmp_path / "p.npy", RNG.normal(size=(ROWS, 3)))
    np.save(tmp_path / "y.npy", RNG.integers(0, 3, ROWS))
    np.save(tmp_path / "w.npy", RNG.uniform(size=ROWS))
    np.savez(tmp_path / "both.npz", predictions=RNG.normal(size=(ROWS, 3)), labels=RNG.integers(0, 3, ROWS))
    (tmp_path / "link-p.npy").symlink_to(tmp_path / "p.npy")
    os.link(tmp_path / "y.npy", tmp_path / "hard-y.npy")
    return tmp_path


FILE_OVERLAPS = {
    "--out is --predictions": (["p.npy", "y.npy"], "p.npy"),
    "--out is --labels": (["p.npy", "y.npy"], "y.npy"),
    "--out is --sample-weight": (["p.npy", "y.npy", "w.npy"], "w.npy"),
    "--out links to --predictions": (["p.npy", "y.npy"], "link-p.npy"),
    "--out is a hard link of --labels": (["p.npy", "y.npy"], "hard-y.npy"),
}


@pytest.mark.parametrize(("inputs", "output"), FILE_OVERLAPS.values(), ids=FILE_OVERLAPS.keys())
def test_an_out_file_that_is_an_input_file_is_refused(
    arrays: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, inputs: list[str], output: str
) -> None:
    monkeypatch.chdir(arrays)
    before = snapshot(arrays)
    names = ["--predictions", "--labels", "--sample-weight"]
    given = [part for name, path in zip(names, inputs, strict=False) for part in (name, path)]
    code, _, err = run(capsys, "compute", "--loss", "scce", "--option", "from_logits=true", *given, "--out", output)
    assert (code, len(err)) == (2, 1), err
    assert f"{output}: the output is the input" in err[0]
    assert snapshot(arrays) == before


def test_an_out_file_that_links_to_an_npz_input_is_refused(arrays: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`archive.npz:key` names the archive: writing through a link over it would lose both arrays."""
    npz = arrays / "both.npz"
    (arrays / "losses.npy").symlink_to(npz)
    before = npz.read_bytes()
    code, _, err = run(
        capsys, "compute", "--loss", "mse", "--predictions", f"{npz}:predictions", "--labels", f"{npz}:predictions",
        "--out", str(arrays / "losses.npy"),
    )  # fmt: skip
    assert (code, len(err)) == (2, 1)
    assert f"the output is the input {npz}" in err[0]
    assert npz.read_bytes() == before


def _full_disk(*_: Any, **__: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_write_that_fails_keeps_the_previous_out_file(
    arrays: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk mid-write: the old file stays whole, no temporary file is left, one line, exit 2."""
    out = arrays / "losses.npy"
    np.save(out, np.arange(5.0))
    before = snapshot(arrays)

    def half_then_full(handle: Any, *_: Any, **__: Any) -> None:
        handle.write(b"\x93NUMPY half")
        _full_disk()

    monkeypatch.setattr(np.lib.format, "write_array", half_then_full)
    code, _, err = run(
        capsys, "compute", "--loss", "mse", "--predictions", str(arrays / "w.npy"), "--labels", str(arrays / "w.npy"),
        "--out", str(out),
    )  # fmt: skip
    assert (code, len(err)) == (2, 1), err
    assert "No space left on device" in err[0]
    assert snapshot(arrays) == before


def test_a_per_sample_write_that_fails_keeps_the_previous_file(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "per_sample.parquet"
    out.write_bytes(b"the previous run's values")
    monkeypatch.setattr(pq.ParquetWriter, "write_table", _full_disk)
    before = snapshot(tmp_path)
    code, _, err = run(capsys, *DATASET, "--dataset", str(dataset), "--per-sample-out", str(out))
    assert (code, len(err)) == (2, 1), err
    assert f"{out}: cannot write" in err[0]
    assert snapshot(tmp_path) == before


def test_outputs_get_the_usual_permissions_or_keep_their_own(
    dataset: Path, arrays: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A temporary file is private (0600); renamed into place it must not make outputs private."""
    mask = os.umask(0o022)
    try:
        new, kept = arrays / "new.parquet", arrays / "kept.parquet"
        kept.write_bytes(b"old")
        kept.chmod(0o640)
        for out in (new, kept):
            assert run(capsys, *DATASET, "--dataset", str(dataset), "--per-sample-out", str(out))[0] == 0
        npy = arrays / "new.npy"
        argv = ["compute", "--loss", "mse", "--predictions", str(arrays / "w.npy"), "--labels", str(arrays / "w.npy")]
        assert run(capsys, *argv, "--out", str(npy))[0] == 0
    finally:
        os.umask(mask)
    assert {path.name: stat.S_IMODE(path.stat().st_mode) for path in (new, kept, npy)} == {
        "new.parquet": 0o644,
        "kept.parquet": 0o640,
        "new.npy": 0o644,
    }
    np.testing.assert_array_equal(np.load(npy).shape, (ROWS,))


def test_an_output_in_a_missing_folder_is_refused_before_any_work(
    dataset: Path, arrays: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    computed = []
    monkeypatch.setattr("service.engine.compute", lambda *a, **k: computed.append(1))
    code, _, err = run(capsys, *DATASET, "--dataset", str(dataset), "--per-sample-out", str(arrays / "no/x.parquet"))
    assert (code, err) == (2, [f"loss-service: {arrays / 'no/x.parquet'}: no such folder {arrays / 'no'}"])
    argv = ["compute", "--loss", "mse", "--predictions", str(arrays / "w.npy"), "--labels", str(arrays / "w.npy")]
    code, _, err = run(capsys, *argv, "--out", str(arrays / "no" / "x.npy"))
    assert (code, len(err)) == (2, 1)
    assert "no such folder" in err[0]
    code, _, err = run(capsys, *argv, "--out", str(arrays))
    assert (code, len(err)) == (2, 1)
    assert computed == []
    assert not (arrays / "no").exists()


# -- 7. bad arguments and damaged files: exit 2 or 3, one line ---------------------------------

BAD_NUMBERS = {
    "--batch-rows 0": (["--batch-rows", "0"], "--batch-rows must be at least 1, not 0"),
    "--batch-rows -5": (["--batch-rows", "-5"], "--batch-rows must be at least 1, not -5"),
    "--chunk-size 0": (["--chunk-size", "0"], "--chunk-size must be at least 1, not 0"),
    "--max-groups 0": (["--max-groups", "0"], "--max-groups must be at least 1, not 0"),
    "--head -1": (["--head", "-1"], "--head must be at least 0, not -1"),
}


@pytest.mark.parametrize(("extra", "message"), BAD_NUMBERS.values(), ids=BAD_NUMBERS.keys())
def test_counts_out_of_range_exit_2_with_one_line(
    dataset: Path, arrays: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    files = ["compute", "--loss", "mse", "--predictions", str(arrays / "w.npy"), "--labels", str(arrays / "w.npy")]
    for argv in ([*DATASET, "--dataset", str(dataset)], files, [*files, "--url", "http://127.0.0.1:1"]):
        assert run(capsys, *argv, *extra) == (2, "", [f"loss-service: {message}"])


MISUSE = {
    "--per-sample-out without --dataset": (["--per-sample-out", "x.parquet"], "--per-sample-out needs --dataset"),
    "--group-by without --dataset": (["--group-by", "country"], "--group-by needs --dataset"),
    "files and --dataset": (["--dataset", "data"], "--dataset reads columns"),
}


@pytest.mark.parametrize(("extra", "message"), MISUSE.values(), ids=MISUSE.keys())
def test_options_that_would_be_ignored_are_refused(
    arrays: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    files = ["compute", "--loss", "mse", "--predictions", str(arrays / "w.npy"), "--labels", str(arrays / "w.npy")]
    code, _, err = run(capsys, *files, *extra)
    assert (code, len(err)) == (2, 1)
    assert message in err[0]
    code, _, err = run(capsys, *DATASET, "--dataset", "data", "--per-sample-out", "x.parquet", "--scheduler", "tcp://x")
    assert (code, len(err)) == (2, 1)
    assert "cannot be used with --scheduler" in err[0]


UNGROUPABLE = {
    "list": pa.array([[1.0, 2.0]] * ROWS),
    "struct": pa.array([{"a": 1}] * ROWS),
    "binary": pa.array([b"\x00"] * ROWS),
}


@pytest.mark.parametrize("kind", UNGROUPABLE)
def test_group_by_a_column_that_cannot_be_a_key_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    pq.write_table(table(key=UNGROUPABLE[kind]), tmp_path / "d.parquet")
    code, _, err = run(capsys, *DATASET, "--dataset", str(tmp_path / "d.parquet"), "--group-by", "key")
    assert (code, len(err)) == (3, 1), err
    assert "column 'key'" in err[0]
    assert "cannot be a segment key" in err[0]


def test_nan_and_null_keys_form_one_group_null(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """NaN never equals itself: each NaN row was a segment of its own."""
    keys = pa.array([1.0, np.nan, None, 2.0] * (ROWS // 4), type=pa.float64())
    pq.write_table(table(key=keys), tmp_path / "d.parquet", row_group_size=15)
    code, out, err = run(
        capsys, *DATASET, "--dataset", str(tmp_path / "d.parquet"), "--group-by", "key", "--batch-rows", "7", "--json"
    )
    assert (code, err) == (0, [])
    groups = json.loads(out)["groups"]
    assert [(g["key"]["key"], g["rows"]) for g in groups] == [(None, ROWS // 2), (1.0, ROWS // 4), (2.0, ROWS // 4)]


def test_temporal_and_dictionary_keys_are_grouped_as_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    day = pa.array(np.array(["2026-01-01", "2026-01-02"] * (ROWS // 2), dtype="datetime64[ns]"))
    tier = pa.array(["gold", "free"] * (ROWS // 2)).dictionary_encode()
    pq.write_table(table(day=day, tier=tier), tmp_path / "d.parquet")
    args = [*DATASET, "--dataset", str(tmp_path / "d.parquet"), "--group-by", "day", "--group-by", "tier", "--json"]
    code, out, err = run(capsys, *args)
    assert (code, err) == (0, [])
    assert [g["key"] for g in json.loads(out)["groups"]] == [
        {"day": "2026-01-01 00:00:00.000000000", "tier": "gold"},
        {"day": "2026-01-02 00:00:00.000000000", "tier": "free"},
    ]


def test_max_groups_bounds_the_segments_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert build_parser().parse_args(["compute", "--loss", "mse"]).max_groups == DEFAULT_MAX_GROUPS == 10_000
    rows = 1_000
    pq.write_table(table(rows, id=np.arange(rows)), tmp_path / "d.parquet")
    args = [*DATASET, "--dataset", str(tmp_path / "d.parquet"), "--group-by", "id"]
    # The engine runs once for the batch, not once per segment found before the limit is seen.
    import service.offline.datasets

    calls = []
    engine = service.offline.datasets.compute
    monkeypatch.setattr(service.offline.datasets, "compute", lambda *a, **k: calls.append(1) or engine(*a, **k))
    code, _, err = run(capsys, *args, "--max-groups", "10")
    assert (code, len(err)) == (3, 1), err
    assert "d.parquet: row 10: more segments of id than the 10 allowed (--max-groups)" in err[0]
    assert len(calls) == 1
    # Across batches, too: 4 batches of 250 rows, 250 keys each.
    code, _, err = run(capsys, *args, "--max-groups", "300", "--batch-rows", "250")
    assert (code, len(err)) == (3, 1), err
    assert "row 250: more segments of id than the 300 allowed" in err[0]
    assert run(capsys, *args, "--max-groups", str(rows), "--json")[0] == 0


def test_max_groups_holds_on_dask_partitions_too(tmp_path: Path) -> None:
    import dask.dataframe as dd
    import pandas as pd

    frame = dd.from_pandas(
        pd.DataFrame({"p": np.linspace(0, 1, 60), "y": np.linspace(1, 0, 60), "id": np.arange(60) % 30}),
        npartitions=3,
    )
    with pytest.raises(DatasetError, match="more segments of id than the 29 allowed"):
        evaluate_dask(frame, Spec("mse", "p", "y", group_by=("id",), max_groups=29))
    assert len(evaluate_dask(frame, Spec("mse", "p", "y", group_by=("id",), max_groups=30)).groups or []) == 30


def mutants(original: bytes, seed: int, count: int) -> list[bytes]:
    """`count` copies of `original` with one to four random bytes overwritten."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        data = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        out.append(bytes(data))
    return out


def assert_clean_exit(code: int, out: str, err: list[str], what: str) -> None:
    assert code in (0, 2, 3), what
    if code:
        assert len(err) == 1, (what, err)
        assert err[0].startswith("loss-service: ")
    else:
        assert err == [], what
        json.loads(out)


def test_byte_mutated_parquet_datasets_exit_0_2_or_3_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """200 damaged copies of a small dataset: damaged page headers, codecs, encodings, footers."""
    buffer = io.BytesIO()
    pq.write_table(table(), buffer, row_group_size=16)
    path, out = tmp_path / "d.parquet", tmp_path / "out" / "per_sample.parquet"
    out.parent.mkdir()
    args = [*DATASET, "--dataset", str(path), "--weight-column", "weight", "--group-by", "country",
            "--per-sample-out", str(out), "--json"]  # fmt: skip
    codes = []
    for number, data in enumerate(mutants(buffer.getvalue(), seed=29, count=200)):
        path.write_bytes(data)
        out.unlink(missing_ok=True)
        code, printed, err = run(capsys, *args)
        assert_clean_exit(code, printed, err, f"mutant {number}")
        assert [p.name for p in out.parent.iterdir()] == (["per_sample.parquet"] if code == 0 else [])
        codes.append(code)
    assert codes.count(3) >= 100  # most damage is found, not read as other numbers


@pytest.mark.parametrize("compression", ["lz4", "uncompressed"])
def test_byte_mutated_arrow_datasets_exit_0_2_or_3_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], compression: str
) -> None:
    """Arrow IPC is read unchecked: damaged offsets or UTF-8 raised UnicodeDecodeError and
    SystemError from the segment keys, and read out of bounds (a segfault) without a full check."""
    import pyarrow.feather as feather

    buffer = io.BytesIO()
    feather.write_feather(table(), buffer, compression=compression)
    path = tmp_path / "d.arrow"
    args = [*DATASET, "--dataset", str(path), "--weight-column", "weight", "--group-by", "country", "--json"]
    for number, data in enumerate(mutants(buffer.getvalue(), seed=2, count=200)):
        path.write_bytes(data)
        assert_clean_exit(*run(capsys, *args), f"mutant {number}")


def test_numpy_warnings_do_not_add_lines_to_the_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """inf and -inf in one column: the engine's finiteness check sums them (NumPy warns of an
    invalid value) before it names the value; the warning is not a second line, nor an error."""
    logits = np.zeros(ROWS * 3)
    logits[[4, 7]] = [np.inf, -np.inf]
    pq.write_table(table(logits=pa.FixedSizeListArray.from_arrays(pa.array(logits), 3)), tmp_path / "d.parquet")
    np.save(tmp_path / "p.npy", logits.reshape(ROWS, 3))
    np.save(tmp_path / "y.npy", np.zeros(ROWS, dtype=int))
    files = ["compute", "--loss", "scce", "--predictions", str(tmp_path / "p.npy"), "--labels", str(tmp_path / "y.npy")]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for argv in ([*DATASET, "--dataset", str(tmp_path / "d.parquet")], files):
            code, _, err = run(capsys, *argv)
            assert (code, len(err)) == (3, 1), err
            assert "inf is not a finite number" in err[0]


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".parquet"])
def test_byte_mutated_input_files_exit_0_2_or_3_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    logits = RNG.normal(size=(ROWS, 3))
    buffer = io.BytesIO()
    if suffix == ".npy":
        np.save(buffer, logits)
    elif suffix == ".npz":
        np.savez(buffer, predictions=logits)
    else:
        pq.write_table(pa.table({"a": logits[:, 0], "b": logits[:, 1], "c": logits[:, 2]}), buffer)
    np.save(tmp_path / "y.npy", RNG.integers(0, 3, ROWS))
    path = tmp_path / f"p{suffix}"
    args = ["compute", "--loss", "scce", "--option", "from_logits=true", "--predictions", str(path),
            "--labels", str(tmp_path / "y.npy"), "--json"]  # fmt: skip
    for number, data in enumerate(mutants(buffer.getvalue(), seed=29, count=200)):
        path.write_bytes(data)
        assert_clean_exit(*run(capsys, *args), f"mutant {number}")


def test_a_parquet_input_with_a_text_column_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """pyarrow's own message was "Needed to copy 1 chunks with 0 nulls, but zero_copy_only was True"."""
    pq.write_table(pa.table({"a": [0.5, 1.5], "who": ["x", "y"]}), tmp_path / "p.parquet")
    code, _, err = run(
        capsys, "compute", "--loss", "mse", "--predictions", str(tmp_path / "p.parquet"),
        "--labels", str(tmp_path / "p.parquet"),
    )  # fmt: skip
    assert (code, err) == (
        2,
        [f"loss-service: {tmp_path / 'p.parquet'}: column 'who' is string, not numbers or lists of numbers"],
    )


def test_an_output_that_is_a_symbolic_link_replaces_the_file_it_points_to(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As a plain write would: the link stays, its target gets the new values."""
    (tmp_path / "runs").mkdir()
    target = tmp_path / "runs" / "per_sample.parquet"
    target.write_bytes(b"the previous run's values")
    link = tmp_path / "latest.parquet"
    link.symlink_to(target)
    code, _, err = run(capsys, *DATASET, "--dataset", str(dataset), "--per-sample-out", str(link))
    assert (code, err) == (0, [])
    assert link.is_symlink()
    assert pq.read_table(target).num_rows == 2 * ROWS
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["per_sample.parquet"]


def test_an_unreachable_dask_scheduler_exits_4_and_a_missing_dask_2(
    dataset: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import dask

    args = [*DATASET, "--dataset", str(dataset), "--scheduler", "tcp://127.0.0.1:1"]
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        code, _, err = run(capsys, *args)
    assert (code, len(err)) == (4, 1), err
    assert err[0].startswith("loss-service: the Dask scheduler at tcp://127.0.0.1:1: Timed out trying to connect")
    monkeypatch.setitem(sys.modules, "dask.base", None)  # as if the extra were not installed
    assert run(capsys, *args) == (2, "", ["loss-service: Dask is an optional extra: pip install 'loss-service[dask]'"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--url", "http://[::1"], "--url 'http://[::1': Invalid port: ':1'"),
        (["--url", "http://127.0.0.1:1", "--api-key", "ключ-secret"], "--api-key (or LOSS_SERVICE_API_KEY): a key is"),
    ],
    ids=["unparsable-url", "non-ascii-key"],
)
def test_a_url_or_key_http_cannot_carry_exits_2(
    arrays: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    files = ["compute", "--loss", "mse", "--predictions", str(arrays / "w.npy"), "--labels", str(arrays / "w.npy")]
    code, _, err = run(capsys, *files, *extra)
    assert (code, len(err)) == (2, 1), err
    assert err[0].startswith(f"loss-service: {message}")
    assert "secret" not in err[0]
