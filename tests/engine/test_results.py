"""One loss result, one recombination (service.values.results): the answers for the chunks of a
batch combine into the answer for the whole batch, as the client, the datasets and the CLI combine
them. Each test fails on a plausible slip: the root taken per chunk, the chunks' means averaged by
count rather than by denominator, an all-ignored chunk counted, the aggregate forgotten."""

from __future__ import annotations

import json
import math
import typing
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from service.cli import main as cli
from service.client import LossClient, LossResult
from service.engine import catalogue, compute
from service.offline.datasets import evaluate_dataset
from service.offline.spec import Spec
from service.server.api.catalogue_schemas import loss_info
from service.values.results import AGGREGATES, Aggregate, Totals, combine, mean_of

# (loss, convention, options): a mean over values, a weighted mean over non-ignored targets, a
# root of a weighted mean (XGBoost's, and CatBoost's over float32 targets), a library's weighted
# mean under a name with parameters, a weighted sum (LightGBM's gamma_deviance, aggregate sum).
CASES = [
    ("mse", "keras", {}),
    ("scce", "torch", {"from_logits": True}),
    ("rmse", "xgboost", {}),
    ("RMSE", "catboost", {}),
    ("Quantile:alpha=0.3", "catboost", {}),
    ("gamma_deviance", "lightgbm", {}),
]
ROWS, CLASSES = 60, 4


def batch(loss: str, seed: int = 3) -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    weight = rng.uniform(0.1, 3.0, ROWS)
    if loss == "scce":
        labels = rng.integers(0, CLASSES, ROWS)
        labels[:12] = -100  # the first chunk's targets all ignored: it counts 0 / 0
        return {"predictions": rng.normal(0, 2, (ROWS, CLASSES)), "labels": labels, "sample_weight": weight}
    if loss == "gamma_deviance":  # positive predictions (the mean) and labels
        return {"predictions": rng.uniform(0.5, 2, ROWS), "labels": rng.uniform(0.5, 2, ROWS), "sample_weight": weight}
    if loss == "mse":
        return {
            "predictions": rng.normal(size=(ROWS, 2)),
            "labels": rng.normal(size=(ROWS, 2)),
            "sample_weight": weight,
        }
    return {"predictions": rng.normal(size=ROWS), "labels": rng.normal(size=ROWS), "sample_weight": weight}


def whole(loss: str, convention: str, options: dict[str, Any]) -> LossResult:
    return compute(loss, **batch(loss), options=options, convention=convention)


def test_the_mean_of_a_sum_and_a_denominator() -> None:
    assert mean_of(9.0, 4.0) == 2.25
    assert mean_of(9.0, 4.0, "root_mean") == 1.5
    assert mean_of(9.0, 4.0, "sum") == 9.0  # the denominator reported, unused
    assert mean_of(0.0, 0.0) == mean_of(0.0, 0.0, "root_mean") == 0.0  # nothing counted: divide_no_nan
    assert mean_of(9.0, 0.0, "sum") == 9.0  # with nothing counted a sum is still the sum


def test_every_aggregate_kind_has_its_mean() -> None:
    assert set(AGGREGATES) == set(typing.get_args(Aggregate))


def test_the_root_is_taken_once_the_chunks_are_summed() -> None:
    parts = [
        LossResult("rmse", np.array([1.0]), 1.0, 1.0, 1, 1.0, "float64", "xgboost", "root_mean"),
        LossResult("rmse", np.array([9.0]), 3.0, 9.0, 1, 1.0, "float64", "xgboost", "root_mean"),
    ]
    combined = combine(parts)
    # sqrt((1 + 9) / 2), not the mean of the roots (2.0), nor the chunks' roots summed (4.0).
    assert combined.mean == math.sqrt(5.0)
    assert (combined.sum, combined.denominator, combined.count, combined.aggregate) == (10.0, 2.0, 2, "root_mean")
    np.testing.assert_array_equal(combined.per_sample, [1.0, 9.0])


def test_a_sums_chunks_add_up_and_are_not_divided() -> None:
    parts = [
        LossResult("gamma_deviance", np.array([1.0]), 1.0, 1.0, 1, 2.0, "float64", "lightgbm", "sum"),
        LossResult("gamma_deviance", np.array([3.0]), 3.0, 3.0, 1, 0.0, "float64", "lightgbm", "sum"),
    ]
    combined = combine(parts)
    # 1 + 3, not (1 + 3) / (2 + 0), nor a chunk weighted 0 left out.
    assert (combined.mean, combined.sum, combined.denominator, combined.aggregate) == (4.0, 4.0, 2.0, "sum")


def test_chunks_weigh_by_their_denominators_not_their_counts() -> None:
    parts = [
        LossResult("mse", np.array([2.0]), 2.0, 2.0, 1, 1.0, "float64", "torch"),
        LossResult("mse", np.array([1.0, 1.0]), 0.5, 2.0, 2, 4.0, "float64", "torch"),
    ]
    assert combine(parts).mean == 4.0 / 5.0  # (2 + 2) / (1 + 4); by count it would be 4 / 3


@pytest.mark.parametrize(("loss", "convention", "options"), CASES)
def test_engine_chunks_combine_to_the_whole_batch(loss: str, convention: str, options: dict[str, Any]) -> None:
    arrays = batch(loss)
    parts = [
        compute(
            loss, **{k: v[a : a + 12] for k, v in arrays.items()}, options=options, convention=convention, chunk=True
        )
        for a in range(0, ROWS, 12)
    ]
    expected = whole(loss, convention, options)
    combined = combine(parts)
    assert combined.mean == pytest.approx(expected.mean, rel=1e-13)
    assert combined.denominator == pytest.approx(expected.denominator, rel=1e-13)
    np.testing.assert_array_equal(combined.per_sample, expected.per_sample)
    totals = Totals()
    for part in parts:
        totals.add(part)
    assert totals.mean() == pytest.approx(expected.mean, rel=1e-13)


def engine_behind(request: httpx.Request) -> httpx.Response:
    """A /v1/loss that answers from the engine: the client's chunks, computed as the service computes
    them; and the catalogue the client reads to know how a batch splits."""
    if request.url.path == "/v1/losses":
        return httpx.Response(200, json={"losses": [loss_info(spec).model_dump() for spec in catalogue()]})
    body = json.loads(request.content)
    result = compute(
        body["loss"],
        np.asarray(body["predictions"]),
        np.asarray(body["labels"]),
        options=body["options"],
        sample_weight=np.asarray(body["sample_weight"]),
        convention=body["convention"],
        chunk=body.get("chunk", False),
    )
    answer = result.answer()
    return httpx.Response(200, json={**answer, "per_sample": answer["per_sample"].tolist()})


@pytest.mark.parametrize(("loss", "convention", "options"), CASES)
def test_the_clients_chunks_combine_to_the_whole_batch(loss: str, convention: str, options: dict[str, Any]) -> None:
    with LossClient("http://engine", chunk_size=12, transport=httpx.MockTransport(engine_behind)) as client:
        result = client.loss(loss, convention=convention, **batch(loss), **options)
    expected = whole(loss, convention, options)
    assert result.mean == pytest.approx(expected.mean, rel=1e-13)
    assert (result.count, result.aggregate) == (expected.count, expected.aggregate)


@pytest.mark.parametrize(("loss", "convention", "options"), CASES)
def test_the_datasets_and_the_clis_batches_combine_to_the_whole(
    loss: str, convention: str, options: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arrays = batch(loss)
    columns = {
        name: pa.array(values)
        if values.ndim == 1
        else pa.FixedSizeListArray.from_arrays(values.ravel(), values.shape[1])
        for name, values in arrays.items()
    }
    pq.write_table(pa.table(columns), tmp_path / "d.parquet")
    expected = whole(loss, convention, options)
    spec = Spec(loss, "predictions", "labels", "sample_weight", options, convention=convention)
    streamed = evaluate_dataset(str(tmp_path / "d.parquet"), spec, batch_rows=12)
    assert streamed.mean == pytest.approx(expected.mean, rel=1e-13)
    assert streamed.aggregate == expected.aggregate
    arguments = ["compute", "--loss", loss, "--convention", convention, "--dataset", str(tmp_path / "d.parquet")]
    arguments += ["--predictions-column", "predictions", "--labels-column", "labels", "--weight-column"]
    arguments += ["sample_weight", "--batch-rows", "12", "--json"]
    arguments += [f"--option={name}={json.dumps(value)}" for name, value in options.items()]
    assert cli(arguments) == 0
    assert json.loads(capsys.readouterr().out)["mean"] == pytest.approx(expected.mean, rel=1e-13)


def test_an_answer_reads_back_into_the_result_it_came_from() -> None:
    """`LossResult.read` of `answer()` (and of an npz answer's arrays) is the same result, its
    per-sample values float64 whatever the answer held; an answer from before `aggregate` was
    sent reads as a mean."""
    made = LossResult(
        loss="poisson_nll", per_sample=np.array([0.5, 1.25], np.float32), mean=0.875, sum=1.75, count=2,
        denominator=2.0, dtype="float32", convention="torch", aggregate="sum",
    )  # fmt: skip
    answer = made.answer()
    read = LossResult.read(answer)
    assert (read.loss, read.mean, read.sum, read.count, read.denominator) == ("poisson_nll", 0.875, 1.75, 2, 2.0)
    assert (read.dtype, read.convention, read.aggregate) == ("float32", "torch", "sum")
    assert read.per_sample.dtype == np.float64
    assert read.per_sample.tolist() == [0.5, 1.25]
    for held in (np.array([0.5, 1.25], np.float32), [1, 2]):  # an npz answer's float32, a JSON list of ints
        assert LossResult.read({**answer, "per_sample": held}).per_sample.dtype == np.float64
    del answer["aggregate"]
    assert LossResult.read(answer).aggregate == "mean"


def test_one_part_is_its_own_combination_and_parts_keep_their_losss_names() -> None:
    part = LossResult(
        loss="huber", per_sample=np.array([1.0, 3.0]), mean=2.0, sum=4.0, count=2, denominator=2.0,
        dtype="float32", convention="keras", aggregate="mean",
    )  # fmt: skip
    assert combine([part]) is part
    other = LossResult(
        loss="huber", per_sample=np.array([5.0]), mean=5.0, sum=5.0, count=1, denominator=1.0,
        dtype="float32", convention="keras", aggregate="mean",
    )  # fmt: skip
    whole = combine([part, other])
    assert (whole.loss, whole.dtype, whole.convention, whole.aggregate) == ("huber", "float32", "keras", "mean")
    assert (whole.per_sample.tolist(), whole.sum, whole.count, whole.denominator, whole.mean) == (
        [1.0, 3.0, 5.0], 9.0, 3, 3.0, 3.0,
    )  # fmt: skip
