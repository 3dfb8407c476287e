"""Datasets bigger than memory: streamed in record batches, on Dask, and sliced by segment."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from service.cli import main as cli
from service.offline.cluster import evaluate_dask, per_sample_dask
from service.offline.datasets import evaluate_dataset
from service.offline.sketch import SKETCH_ACCURACY
from service.offline.spec import DatasetError, Spec
from tests.servers import served
from tests.tolerance import FLOAT32_MEAN_ULPS, assert_close

ROWS_PER_FILE, FILES, CLASSES = 2_500, 4, 5


def write_dataset(directory: Path, seed: int = 0) -> dict[str, np.ndarray[Any, Any]]:
    """Four files of 2,500 rows in row groups of 700: batches cross row groups and files."""
    rng = np.random.default_rng(seed)
    columns: dict[str, list[Any]] = {"logits": [], "label": [], "weight": [], "country": [], "tier": []}
    for number in range(FILES):
        logits = rng.normal(0, 3, (ROWS_PER_FILE, CLASSES))
        label = rng.integers(0, CLASSES, ROWS_PER_FILE)
        label[rng.random(ROWS_PER_FILE) < 0.1] = -100  # PyTorch's ignored targets
        weight = rng.uniform(0.0, 2.0, ROWS_PER_FILE)
        country = rng.choice(["de", "fr", "us"], ROWS_PER_FILE)
        tier = rng.integers(1, 3, ROWS_PER_FILE)
        table = pa.table(
            {
                "logits": pa.FixedSizeListArray.from_arrays(pa.array(logits.ravel()), CLASSES),
                "label": label,
                "weight": weight,
                "country": country,
                "tier": tier,
            }
        )
        pq.write_table(table, directory / f"part-{number}.parquet", row_group_size=700)
        for name, values in zip(columns, (logits, label, weight, country, tier), strict=True):
            columns[name].append(values)
    return {name: np.concatenate(parts) for name, parts in columns.items()}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray[Any, Any]]]:
    directory = tmp_path_factory.mktemp("dataset")
    return directory, write_dataset(directory)


@pytest.fixture(scope="module")
def api() -> Iterator[httpx.Client]:
    with served() as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


SCCE = {"from_logits": True, "label_smoothing": 0.1}


@pytest.fixture(autouse=True)
def environment_kept() -> Iterator[None]:
    """dask.distributed sets variables such as MALLOC_TRIM_THRESHOLD_ in this process's environment
    for its workers; servers that later tests start would inherit them."""
    before = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(before)


def v1_loss(api: httpx.Client, columns: dict[str, Any], rows: Any, dtype: str, weighted: bool) -> dict[str, Any]:
    body = {
        "loss": "scce",
        "options": SCCE,
        "predictions": columns["logits"][rows].tolist(),
        "labels": columns["label"][rows].tolist(),
        "convention": "torch",
        "dtype": dtype,
    }
    if weighted:
        body["sample_weight"] = columns["weight"][rows].tolist()
    response = api.post("/v1/loss", json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_streaming_gives_the_services_numbers(
    data: tuple[Path, dict[str, Any]], api: httpx.Client, tmp_path: Path, dtype: str, weighted: bool
) -> None:
    directory, columns = data
    spec = Spec("scce", "logits", "label", "weight" if weighted else None, SCCE, dtype, "torch")  # type: ignore[arg-type]
    out = tmp_path / "per_sample.parquet"
    result = evaluate_dataset(str(directory), spec, per_sample_out=str(out), batch_rows=1_000)
    whole = v1_loss(api, columns, slice(None), dtype, weighted)
    written = pq.read_table(out)
    np.testing.assert_array_equal(written.column("row").to_numpy(), np.arange(FILES * ROWS_PER_FILE))
    # Per sample: bit for bit what /v1/loss answers for the same rows.
    np.testing.assert_array_equal(written.column("per_sample").to_numpy(), np.asarray(whole["per_sample"]))
    assert (result.rows, result.count) == (FILES * ROWS_PER_FILE, whole["count"])
    # Sums and means: batch by batch in another order, within the summation-order tolerance.
    assert_close(result.denominator, whole["denominator"], dtype, what="denominator", ulps=FLOAT32_MEAN_ULPS)
    assert_close(result.sum, whole["sum"], dtype, what="sum", weight=abs(whole["sum"]), ulps=FLOAT32_MEAN_ULPS)
    assert_close(result.mean, whole["mean"], dtype, what="mean", ulps=FLOAT32_MEAN_ULPS)


def test_segments_have_the_numbers_of_their_own_rows(data: tuple[Path, dict[str, Any]], api: httpx.Client) -> None:
    directory, columns = data
    spec = Spec("scce", "logits", "label", "weight", SCCE, "float64", "torch", ("country", "tier"))
    result = evaluate_dataset(str(directory), spec, batch_rows=1_000)
    assert result.groups is not None
    keys = [(g["key"]["country"], g["key"]["tier"]) for g in result.groups]
    assert keys == sorted(keys)
    assert len(keys) == 6
    assert sum(g["rows"] for g in result.groups) == result.rows
    for group in result.groups:
        rows = np.flatnonzero(
            (columns["country"] == group["key"]["country"]) & (columns["tier"] == group["key"]["tier"])
        )
        whole = v1_loss(api, columns, rows, "float64", True)
        assert group["rows"] == len(rows)
        assert math.isclose(group["mean"], whole["mean"], rel_tol=1e-12)
        assert math.isclose(group["sum"], whole["sum"], rel_tol=1e-12)
        assert group["denominator"] == pytest.approx(whole["denominator"], rel=1e-12)
        values = np.asarray(whole["per_sample"])
        for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
            exact = float(np.quantile(values, q, method="lower"))
            assert abs(group[name] - exact) <= SKETCH_ACCURACY * abs(exact) + 1e-12, (name, group[name], exact)


@pytest.mark.slow
def test_dask_on_two_workers_gives_the_same_numbers(data: tuple[Path, dict[str, Any]], capsys: Any) -> None:
    from distributed import LocalCluster

    directory, _ = data
    for dtype in ("float64", "float32"):
        spec = Spec("scce", "logits", "label", "weight", SCCE, dtype, "torch", ("country",))  # type: ignore[arg-type]
        streamed = evaluate_dataset(str(directory), spec, batch_rows=1_000)
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            distributed = evaluate_dask(str(directory), spec, scheduler=cluster.scheduler_address)
            assert cli(
                ["compute", "--loss", "scce", "--option", "from_logits=true", "--option", "label_smoothing=0.1",
                 "--convention", "torch", "--dtype", dtype, "--dataset", str(directory), "--predictions-column",
                 "logits", "--labels-column", "label", "--weight-column", "weight", "--group-by", "country",
                 "--scheduler", cluster.scheduler_address, "--json"]
            ) == 0  # fmt: skip
        printed = json.loads(capsys.readouterr().out)
        assert (distributed.rows, distributed.count) == (streamed.rows, streamed.count)
        for result in (distributed, printed):
            mean = result.mean if isinstance(result, type(streamed)) else result["mean"]
            assert_close(mean, streamed.mean, dtype, what="mean", ulps=FLOAT32_MEAN_ULPS)
        assert distributed.groups is not None
        assert streamed.groups is not None
        assert [g["key"] for g in distributed.groups] == [g["key"] for g in streamed.groups]
        for ours, theirs in zip(distributed.groups, streamed.groups, strict=True):
            assert_close(ours["mean"], theirs["mean"], dtype, what="group mean", ulps=FLOAT32_MEAN_ULPS)
            assert ours["p50"] == theirs["p50"]  # the same sketch, merged in another order


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_dask_dataframe_in_the_python_api(data: tuple[Path, dict[str, Any]], api: httpx.Client, dtype: str) -> None:
    import dask.dataframe as dd

    directory, columns = data
    spec = Spec("scce", "logits", "label", "weight", SCCE, dtype, "torch")  # type: ignore[arg-type]
    frame = dd.read_parquet(str(directory), dtype_backend="pyarrow")
    assert frame.npartitions >= 2
    whole = v1_loss(api, columns, slice(None), dtype, True)
    # Per sample on Dask, too: bit for bit what /v1/loss answers.
    np.testing.assert_array_equal(per_sample_dask(frame, spec).compute().to_numpy(), np.asarray(whole["per_sample"]))
    assert_close(evaluate_dask(frame, spec).mean, whole["mean"], dtype, what="mean", ulps=FLOAT32_MEAN_ULPS)


def malformed(directory: Path, kind: str) -> None:
    good = pa.table(
        {"logits": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(30)), 3), "label": np.zeros(10, int)}
    )
    pq.write_table(good, directory / "a.parquet")
    if kind == "ragged":
        logits = pa.array([[0.1, 0.2, 0.3]] * 7 + [[0.1, 0.2]] + [[0.1, 0.2, 0.3]] * 2, type=pa.list_(pa.float64()))
        bad = pa.table({"logits": logits, "label": np.zeros(10, int)})
    elif kind == "nan":
        values = np.zeros(30)
        values[3 * 6 + 1] = np.nan
        bad = pa.table({"logits": pa.FixedSizeListArray.from_arrays(pa.array(values), 3), "label": np.zeros(10, int)})
    elif kind == "type":
        bad = pa.table({"logits": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(30)), 3), "label": ["0"] * 10})
    else:
        bad = pa.table(
            {"scores": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(30)), 3), "label": np.zeros(10, int)}
        )
    pq.write_table(bad, directory / "b.parquet")


MALFORMED = [
    ("missing", "no column 'logits'"),
    ("ragged", "b.parquet: row 7, column 'logits': ragged rows"),
    ("nan", "b.parquet: row 6, column 'logits': nan is not a finite number"),
    ("type", "column 'label': string, not numbers"),
]


@pytest.mark.parametrize(("kind", "message"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_datasets_exit_3_naming_file_row_and_column(
    tmp_path: Path, capsys: Any, kind: str, message: str
) -> None:
    directory = tmp_path / "data"
    directory.mkdir()
    malformed(directory, kind)
    out = tmp_path / "per_sample.parquet"
    code = cli(
        ["compute", "--loss", "scce", "--option", "from_logits=true", "--dataset", str(directory),
         "--predictions-column", "logits", "--labels-column", "label", "--per-sample-out", str(out)]
    )  # fmt: skip
    assert code == 3
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [directory], "no output file, partial or temporary, is left behind"


def test_the_cli_prints_groups_as_a_table_and_as_json(data: tuple[Path, dict[str, Any]], capsys: Any) -> None:
    directory, _ = data
    common = ["compute", "--loss", "scce", "--option", "from_logits=true", "--dataset", f"{directory}/*.parquet",
              "--predictions-column", "logits", "--labels-column", "label", "--convention", "torch",
              "--group-by", "country"]  # fmt: skip
    assert cli(common) == 0
    table = capsys.readouterr().out
    assert "rows        10,000" in table
    assert "country=de: rows" in table
    assert cli([*common, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {
        "loss",
        "mean",
        "sum",
        "count",
        "denominator",
        "rows",
        "dtype",
        "convention",
        "groups",
        "aggregate",
    }
    assert [g["key"] for g in printed["groups"]] == [{"country": c} for c in ("de", "fr", "us")]
    assert set(printed["groups"][0]) == {"key", "rows", "count", "sum", "mean", "denominator", "p50", "p90", "p99"}


def test_a_progress_bar_on_a_terminal_only(data: tuple[Path, dict[str, Any]], capsys: Any, monkeypatch: Any) -> None:
    directory, _ = data
    args = ["compute", "--loss", "mse", "--dataset", str(directory),
            "--predictions-column", "weight", "--labels-column", "weight"]  # fmt: skip
    assert cli(args) == 0
    assert capsys.readouterr().err == ""  # not a terminal: no bar
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    assert cli(args) == 0
    bar = capsys.readouterr().err
    assert "10.0k/10.0k" in bar
    assert "row/s" in bar


def test_an_empty_glob_and_an_all_ignored_torch_dataset_are_refused(tmp_path: Path) -> None:
    spec = Spec("scce", "logits", "label", None, {"from_logits": True}, "float64", "torch")
    with pytest.raises(DatasetError, match="no Parquet or Arrow files"):
        evaluate_dataset(str(tmp_path / "*.parquet"), spec)
    table = pa.table({"logits": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(6)), 3), "label": [-100, -100]})
    pq.write_table(table, tmp_path / "ignored.parquet")
    with pytest.raises(DatasetError, match="every target is ignored"):
        evaluate_dataset(str(tmp_path), spec)
