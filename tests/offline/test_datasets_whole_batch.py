"""Datasets read in record batches never change a number: a loss whose samples read the whole batch
is computed over the whole dataset (log_loss and brier with the dataset's classes, found in a
first pass; circle when the dataset is one batch) or refused by name. Numbers from scikit-learn or
a naive float64 reference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import brier_score_loss, log_loss

from service.cli import main as cli
from service.offline.cluster import evaluate_dask
from service.offline.datasets import evaluate_dataset
from service.offline.spec import DatasetError, Spec
from tests.reference import naive

RNG = np.random.default_rng(23)


def column(values: np.ndarray[Any, Any]) -> pa.Array:
    if values.ndim == 1:
        return pa.array(values)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), int(np.prod(values.shape[1:])))


def write(directory: Path, files: int, **columns: np.ndarray[Any, Any]) -> str:
    """The columns cut into `files` Parquet files, in order."""
    rows = len(next(iter(columns.values())))
    for number, part in enumerate(np.array_split(np.arange(rows), files)):
        table = pa.table({name: column(values[part]) for name, values in columns.items()})
        pq.write_table(table, directory / f"part-{number}.parquet")
    return str(directory)


def binary(rows: int = 120) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Labels whose first 30 rows are all of class 1: a batch of 30 holds one class only."""
    labels = RNG.integers(0, 2, rows)
    labels[:30] = 1
    labels[30:33] = 0
    return RNG.uniform(0.02, 0.98, rows), labels


def test_log_loss_reads_the_datasets_classes_in_a_first_pass(tmp_path: Path) -> None:
    probabilities, labels = binary()
    (tmp_path / "data").mkdir()
    path = write(tmp_path / "data", 2, p=probabilities, y=labels)
    result = evaluate_dataset(path, Spec("log_loss", "p", "y"), batch_rows=30)
    assert result.mean == pytest.approx(log_loss(labels, probabilities), rel=1e-13)
    assert (result.rows, result.count) == (120, 120)
    per_sample = tmp_path / "out.parquet"
    grouped = evaluate_dataset(
        path, Spec("log_loss", "p", "y", group_by=("y",)), batch_rows=30, per_sample_out=str(per_sample)
    )
    written = pq.read_table(per_sample).column("per_sample").to_numpy()
    expected = -np.log(np.where(labels == 1, probabilities, 1 - probabilities))
    np.testing.assert_allclose(written, expected, rtol=1e-13)
    for group in grouped.groups or []:
        rows = labels == group["key"]["y"]
        assert group["mean"] == pytest.approx(float(expected[rows].mean()), rel=1e-13)


def test_brier_score_over_batches_missing_a_class_and_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = RNG.integers(0, 3, 90)
    labels[:30] = 2
    probabilities = RNG.dirichlet(np.ones(3), 90)
    weights = RNG.uniform(0.5, 2.0, 90)
    expected = brier_score_loss(labels, probabilities, sample_weight=weights)
    naive_mean = np.average(np.sum((np.eye(3)[labels] - probabilities) ** 2, axis=1), weights=weights)
    assert expected == pytest.approx(naive_mean, rel=1e-13)
    path = write(tmp_path, 3, p=probabilities, y=labels, w=weights)
    result = evaluate_dataset(path, Spec("brier", "p", "y", "w"), batch_rows=30)
    assert result.mean == pytest.approx(expected, rel=1e-13)
    arguments = ["compute", "--loss", "brier_score_loss", "--dataset", path, "--predictions-column", "p"]
    arguments += ["--labels-column", "y", "--weight-column", "w", "--batch-rows", "30", "--json"]
    assert cli(arguments) == 0
    assert json.loads(capsys.readouterr().out)["mean"] == pytest.approx(expected, rel=1e-13)


def test_a_dataset_whose_labels_hold_too_few_classes_is_refused_across_the_dataset(tmp_path: Path) -> None:
    probabilities = RNG.uniform(0.1, 0.9, 40)
    path = write(tmp_path, 2, p=probabilities, y=np.ones(40, dtype=np.int64))
    with pytest.raises(DatasetError, match=r"column 'y': across the dataset, 1 classes \[1\.0\]"):
        evaluate_dataset(path, Spec("log_loss", "p", "y"), batch_rows=10)
    given = evaluate_dataset(path, Spec("log_loss", "p", "y", options={"classes": [0, 1]}), batch_rows=10)
    assert given.mean == pytest.approx(log_loss(np.ones(40), probabilities, labels=[0, 1]), rel=1e-13)


def embeddings(rows: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    values = RNG.normal(size=(rows, 5))
    return values / np.linalg.norm(values, axis=1, keepdims=True), RNG.integers(0, 3, rows)


def test_circle_is_computed_over_a_dataset_of_one_batch_and_refused_beyond(tmp_path: Path) -> None:
    points, classes = embeddings(60)
    path = write(tmp_path, 3, e=points, y=classes)  # three files: three record batches before
    per_sample, mean = naive.circle(points.tolist(), classes.tolist())
    result = evaluate_dataset(path, Spec("circle", "e", "y"))
    assert result.mean == pytest.approx(mean, rel=1e-10)
    assert result.count == 60
    with pytest.raises(DatasetError, match=r"circle .*60 rows.*batch of 40 rows"):
        evaluate_dataset(path, Spec("circle", "e", "y"), batch_rows=40)
    assert len(per_sample) == 60


def test_dask_partitions_get_the_datasets_classes_and_circle_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("dask")
    import dask.dataframe as dd
    import pandas as pd

    probabilities, labels = binary()
    (tmp_path / "binary").mkdir()
    path = write(tmp_path / "binary", 4, p=probabilities, y=labels)  # the first file: class 1 alone
    expected = log_loss(labels, probabilities)
    assert evaluate_dask(path, Spec("log_loss", "p", "y")).mean == pytest.approx(expected, rel=1e-13)
    frame = dd.from_pandas(pd.DataFrame({"p": probabilities, "y": labels}), npartitions=4)
    assert evaluate_dask(frame, Spec("log_loss", "p", "y")).mean == pytest.approx(expected, rel=1e-13)
    points, classes = embeddings(60)
    (tmp_path / "circle").mkdir()
    with pytest.raises(DatasetError, match=r"circle .*each partition"):
        evaluate_dask(write(tmp_path / "circle", 3, e=points, y=classes), Spec("circle", "e", "y"))
