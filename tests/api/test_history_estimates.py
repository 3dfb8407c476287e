"""The history's `estimated` fields (a model configured with `estimate`), on SQLite and PostgreSQL.

Each bucket's estimate is checked against a deliberately naive float64 reference written here:
per prediction, the loss it would incur for each class written out by hand, weighted by the
belief (the prediction's own probabilities, or those recalibrated by a temperature the test
sets), then the bucket's shares summed as /v1/loss sums them. Joined pairs count with their
labels' sample weights; pending ones with weight 1. Both ways of reading the history (rollup
cells for aligned windows, the rows otherwise) must agree with it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import orjson
import pytest

from tests.api.test_history import DAY, HOUR, T0, Client, joined_mask, log_cohort, served

__all__ = ["served"]

EPSILON = 1e-7  # Keras's clipping of probabilities
# The engine's refusal of a row of probabilities summing to 0 (its index: within the part refused alone)
ZERO_SUM_REFUSAL = "predictions[0]: the class probabilities of this sample sum to 0"


def bce_table(p: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Keras binary cross-entropy of probability p for label 0 and label 1, (n, 2)."""
    clipped = np.clip(p, EPSILON, 1 - EPSILON)
    return np.stack([-np.log(1 - clipped), -np.log(clipped)], axis=1)


def scce_table(z: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """PyTorch cross-entropy of logits z for each class, (n, C), by a plain log-sum-exp."""
    out = np.empty_like(z)
    for i, row in enumerate(z):
        top = max(row)
        total = sum(np.exp(v - top) for v in row)
        for c in range(len(row)):
            out[i, c] = -(row[c] - top - np.log(total))
    return out


def softmax(z: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


CASES: dict[str, dict[str, Any]] = {
    "bce-keras-probabilities": {"losses": [{"loss": "binary_crossentropy"}, {"loss": "mse"}], "convention": "keras"},
    "scce-torch-logits": {
        "losses": [{"loss": "sparse_categorical_crossentropy", "options": {"from_logits": True}}],
        "convention": "torch",
    },
}


def data(name: str, n: int, rng: np.random.Generator) -> tuple[Any, Any, Any, Any, Any]:
    """(predictions, labels, weights, loss table (n, C), own belief (n, C))."""
    weights = rng.uniform(0.2, 3.0, n)
    if name == "bce-keras-probabilities":
        p = rng.uniform(0.02, 0.98, n)
        belief = np.stack([1 - p, p], axis=1)
        return p, (rng.uniform(size=n) < p).astype(float), weights, bce_table(p), belief
    z = rng.normal(size=(n, 3)) * 2
    belief = softmax(z)
    labels = np.array([rng.choice(3, p=row) for row in belief])
    return z, labels, weights, scce_table(z), belief


def reference(table: Any, belief: Any, weights: Any, rows: Any, convention: str = "torch") -> dict[str, Any]:
    """The estimate over `rows` (a mask) with each row's sample weight `weights` (the label's
    where joined, 1 where pending): mean = sum w E / D, sigma = sqrt(sum w^2 Var) / D, where D is
    sum w under PyTorch's weighted mean and the number of rows under Keras's (sum over batch size)."""
    total, variance, denominator = 0.0, 0.0, 0.0
    for i in np.flatnonzero(rows):
        e = sum(float(belief[i, c]) * float(table[i, c]) for c in range(table.shape[1]))
        v = sum(float(belief[i, c]) * (float(table[i, c]) - e) ** 2 for c in range(table.shape[1]))
        total += weights[i] * e
        variance += weights[i] ** 2 * v
        denominator += weights[i] if convention == "torch" else 1.0
    mean, sigma = total / denominator, variance**0.5 / denominator
    return {"mean": mean, "low": mean - 3 * sigma, "high": mean + 3 * sigma}


def check_buckets(
    answer: dict[str, Any], times: Any, joined: Any, table: Any, belief: Any, weights: Any, convention: str
) -> int:
    """Every bucket's estimate against the reference; how many were checked."""
    shares = np.where(joined, weights, 1.0)
    checked = 0
    for bucket in answer["buckets"]:
        inside = (times >= bucket["start"]) & (times < bucket["start"] + answer["step"])
        if "segment" in bucket:
            inside &= np.array([bucket["segment"] == value for value in answer["_countries"]])
        estimated = bucket["losses"][0]["estimated"]
        expected = reference(table, belief, shares, inside, convention)
        for key in ("mean", "low", "high"):
            assert estimated[key] == pytest.approx(expected[key], rel=1e-9, abs=1e-12), (bucket["start"], key)
        pending = inside & ~joined
        assert estimated["predictions"] == int(inside.sum())
        assert estimated["pending"] == int(pending.sum())
        if pending.any():
            waiting = reference(table, belief, np.ones(len(times)), pending, convention)["mean"]
            assert estimated["pending_mean"] == pytest.approx(waiting, rel=1e-9)
        else:
            assert estimated["pending_mean"] is None
        if len(bucket["losses"]) > 1:
            assert bucket["losses"][1]["estimated"] is None  # mse: not estimated
        checked += 1
    return checked


@pytest.mark.parametrize("name", list(CASES))
def test_each_buckets_estimate_is_the_naive_sum_over_its_predictions(served: Client, name: str) -> None:
    n = 90
    predictions, labels, weights, table, belief = data(name, n, np.random.default_rng(3))
    config = {**CASES[name], "estimate": {"losses": [0]}}
    times = log_cohort(served, "m", n, config, predictions, labels, weights)
    joined = joined_mask(served, "m", n)
    assert 0 < joined.sum() < n
    countries = [["BR", "US", None][i % 3] for i in range(n)]
    for query in (
        f"start={T0:.0f}&end={T0 + 3 * HOUR:.0f}&step=3600",  # rollup cells
        f"start={T0 + 1:.0f}&end={T0 + 3 * HOUR:.0f}&step=3600",  # the rows
        f"start={T0:.0f}&end={T0 + 3 * HOUR:.0f}&step=3600&by=country",
        f"start={T0 + 7:.0f}&end={T0 + 3 * HOUR:.0f}&step=1800&by=country",
    ):
        answer = served.ok("GET", f"/v1/models/m/history?{query}")
        answer["_countries"] = countries
        assert check_buckets(answer, times, joined, table, belief, weights, config["convention"]) >= 3, query


def test_pending_predictions_are_estimated_under_the_current_fit_and_joined_ones_under_the_fit_they_joined_with(
    served: Client,
) -> None:
    n = 60
    rng = np.random.default_rng(8)
    z = rng.normal(size=(n, 3)) * 2
    labels = rng.integers(0, 3, n)
    config = {
        "losses": [{"loss": "sparse_categorical_crossentropy", "options": {"from_logits": True}}],
        "convention": "torch",
        "keep_pairs": True,
        "estimate": {"calibration": "temperature", "window": 1000},
        "segments": [],
        "retention_seconds": 5 * DAY,
    }
    served.ok("PUT", "/v1/models/m", json=config)
    times = T0 + np.arange(n) * 60.0
    ids = [f"p{i}" for i in range(n)]
    served.ok(
        "POST", "/v1/models/m/predictions", json={"ids": ids, "predictions": z.tolist(), "timestamps": times.tolist()}
    )

    def set_temperature(t: float) -> None:
        fit = {"calibration": "temperature", "parameters": {"method": "temperature", "temperature": t}}
        with served.store.database.transaction() as tx:
            tx.execute("UPDATE loss_models SET estimate_fit = ? WHERE name = ?", [orjson.dumps(fit).decode(), "m"])

    set_temperature(2.0)
    served.clock.now = T0 + DAY
    first = np.arange(n) < n // 2
    served.ok("POST", "/v1/models/m/labels", json={"ids": ids[: n // 2], "labels": labels[: n // 2].tolist()})
    set_temperature(0.5)  # after those pairs joined: only the pending ones see it
    answer = served.ok("GET", f"/v1/models/m/history?start={T0:.0f}&end={T0 + HOUR:.0f}&step=3600")
    (bucket,) = answer["buckets"]
    table = scce_table(z)
    belief = np.where(first[:, None], softmax(z / 2.0), softmax(z / 0.5))
    expected = reference(table, belief, np.ones(n), np.ones(n, bool))
    estimated = bucket["losses"][0]["estimated"]
    for key in ("mean", "low", "high"):
        assert estimated[key] == pytest.approx(expected[key], rel=1e-9)
    assert estimated["pending_mean"] == pytest.approx(reference(table, softmax(z / 0.5), np.ones(n), ~first)["mean"])
    # the logged predictions are what is scored, whatever the belief: the realized mean is /v1/loss's
    realized = served.ok(
        "POST",
        "/v1/loss",
        json={
            "loss": "sparse_categorical_crossentropy",
            "options": {"from_logits": True},
            "convention": "torch",
            "predictions": z[first].tolist(),
            "labels": labels[first].tolist(),
        },
    )
    assert bucket["losses"][0]["mean"] == pytest.approx(realized["mean"], rel=1e-12)


def test_a_model_without_estimate_answers_no_estimated_field(served: Client) -> None:
    served.ok("PUT", "/v1/models/m", json={"losses": [{"loss": "binary_crossentropy"}]})
    served.ok("POST", "/v1/models/m/predictions", json={"ids": ["a"], "predictions": [0.3], "timestamps": [T0]})
    answer = served.ok("GET", f"/v1/models/m/history?start={T0:.0f}&end={T0 + HOUR:.0f}&step=3600")
    assert "estimated" not in answer["buckets"][0]["losses"][0]


def test_stored_bytes_count_the_expected_losses_kept_and_their_removal(served: Client) -> None:
    from service.store.schema import table_bytes_sql

    config = {**CASES["scce-torch-logits"], "estimate": {}, "retention_seconds": 2 * DAY}
    served.ok("PUT", "/v1/models/m", json=config)
    z = np.random.default_rng(2).normal(size=(20, 3))
    ids = [f"p{i}" for i in range(20)]
    served.ok("POST", "/v1/models/m/predictions", json={"ids": ids, "predictions": z.tolist()})
    served.ok("POST", "/v1/models/m/labels", json={"ids": ids[:12], "labels": [1] * 12})  # joined on the labels
    served.ok("POST", "/v1/models/m/labels", json={"ids": ["q0", "q1"], "labels": [0, 2]})
    served.ok("POST", "/v1/models/m/predictions", json={"ids": ["q0", "q1"], "predictions": z[:2].tolist()})

    def recounted() -> tuple[int, int, int]:
        with served.store.database.transaction(write=False) as tx:
            name = tx.dialect.name
            counts = [
                int(tx.one(f"SELECT coalesce(sum({table_bytes_sql(name, table)}), 0) FROM {table}")[0])
                for table in ("loss_predictions", "loss_labels")
            ]
            kept = tx.one(
                "SELECT count(*) FROM loss_predictions p LEFT JOIN loss_labels l ON l.id = p.id "
                "WHERE coalesce(p.expected, l.expected) IS NOT NULL"
            )[0]
        return counts[0] + counts[1], int(kept), served.ok("GET", "/v1/models/m")["stored_bytes"]

    total, kept, stored = recounted()
    assert kept == 14  # each joined pair keeps one EXPECTED_LOSS entry, on its completing row
    assert stored == total
    served.clock.now += 3 * DAY
    served.store.sweep_expired(served.clock.now)
    assert recounted() == (0, 0, 0)


def test_a_fit_of_another_calibration_than_the_configured_one_is_not_used(served: Client) -> None:
    z = np.random.default_rng(4).normal(size=(30, 1)) * 2
    config = {
        "losses": [{"loss": "binary_crossentropy", "options": {"from_logits": True}}],
        "convention": "torch",
        "keep_pairs": True,
        "estimate": {"calibration": "temperature"},
        "retention_seconds": 5 * DAY,
    }
    served.ok("PUT", "/v1/models/m", json=config)
    ids = [f"p{i}" for i in range(30)]
    served.ok("POST", "/v1/models/m/predictions", json={"ids": ids, "predictions": z.tolist(), "timestamps": [T0] * 30})
    fit = {"calibration": "temperature", "parameters": {"method": "temperature", "temperature": 3.0}}
    with served.store.database.transaction() as tx:
        tx.execute("UPDATE loss_models SET estimate_fit = ? WHERE name = 'm'", [orjson.dumps(fit).decode()])
    query = f"/v1/models/m/history?start={T0:.0f}&end={T0 + HOUR:.0f}&step=3600"
    p = 1 / (1 + np.exp(-z[:, 0]))
    table = np.stack([-np.log(1 - p), -np.log(p)], axis=1)

    def estimate_under(q1: np.ndarray[Any, Any]) -> float:
        return reference(table, np.stack([1 - q1, q1], axis=1), np.ones(30), np.ones(30, bool))["mean"]

    got = served.ok("GET", query)["buckets"][0]["losses"][0]["estimated"]["mean"]
    assert got == pytest.approx(estimate_under(1 / (1 + np.exp(-z[:, 0] / 3.0))), rel=1e-9)
    served.ok("PUT", "/v1/models/m", json={**config, "estimate": {"calibration": "isotonic"}})
    got = served.ok("GET", query)["buckets"][0]["losses"][0]["estimated"]["mean"]
    assert got == pytest.approx(estimate_under(p), rel=1e-9)  # the temperature fit is not an isotonic one


def test_a_sharpened_model_misses_its_band_without_recalibration_and_holds_it_with_a_fitted_temperature(
    served: Client,
) -> None:
    """Logits sharpened by a temperature of 0.5 (doubled), labels drawn from the true softmax: a
    cohort of 1,000 pairs joined after 2,000 earlier ones realizes a mean cross-entropy outside
    the band of the predictions' own belief, and inside the band under the temperature the
    service fitted on the earlier pairs."""
    rng = np.random.default_rng(12)
    n_window, n_cohort = 2000, 1000
    z = rng.normal(0.0, 1.0, (n_window + n_cohort, 4))
    truth = softmax(z)
    labels = (rng.random((len(z), 1)) > truth.cumsum(axis=1)).sum(axis=1).clip(0, 3)
    logged = 2.0 * z
    base = {
        "losses": [{"loss": "sparse_categorical_crossentropy", "options": {"from_logits": True}}],
        "convention": "torch",
        "keep_pairs": True,
        "retention_seconds": 5 * DAY,
    }
    found = {}
    for model, calibration in (("own", "none"), ("fitted", "temperature")):
        served.ok(
            "PUT", f"/v1/models/{model}", json={**base, "estimate": {"calibration": calibration, "window": n_window}}
        )
        for part, (first, last, at) in enumerate(((0, n_window, T0 - DAY), (n_window, len(z), T0))):
            ids = [f"p{i}" for i in range(first, last)]
            times = (at + np.arange(last - first) * 3.0).tolist()
            served.ok(
                "POST", f"/v1/models/{model}/predictions",
                json={"ids": ids, "predictions": logged[first:last].tolist(), "timestamps": times},
            )  # fmt: skip
            served.ok("POST", f"/v1/models/{model}/labels", json={"ids": ids, "labels": labels[first:last].tolist()})
            if part == 0 and calibration == "temperature":
                fit = served.ok("GET", f"/v1/models/{model}")["estimate_fit"]
                assert fit["pairs"] == n_window
                assert 1.6 < fit["parameters"]["temperature"] < 2.4, fit
        answer = served.ok("GET", f"/v1/models/{model}/history?start={T0:.0f}&end={T0 + HOUR:.0f}&step=3600")
        (bucket,) = answer["buckets"]
        assert bucket["joined"] == n_cohort
        found[model] = (bucket["losses"][0]["mean"], bucket["losses"][0]["estimated"])
    realized, own = found["own"]
    assert found["fitted"][0] == realized  # the same pairs, the same loss: only the belief differs
    assert not own["low"] <= realized <= own["high"], own  # over-confident: expected to do better
    fitted = found["fitted"][1]
    print(f"realized {realized:.4f}; own belief {own}; fitted {fitted}")
    assert fitted["low"] <= realized <= fitted["high"], (realized, fitted)


@pytest.mark.parametrize(("dtype", "rel"), [("float64", 1e-9), ("float32", 1e-5)])
def test_a_pending_prediction_the_loss_refuses_leaves_the_others_of_its_batch_estimated(
    served: Client, caplog: pytest.LogCaptureFixture, dtype: str, rel: float
) -> None:
    # One row of probabilities summing to 0 and one outside [0, 1], accepted while pending (no label
    # to check them against yet), must not take the estimate of every other pending row with them.
    # The stored rows are read back in the model's dtype (float32: each value rounded once).
    config = {"losses": [{"loss": "categorical_crossentropy"}], "estimate": {}, "dtype": dtype}
    served.ok("PUT", "/v1/models/m", json=config)
    p = np.random.default_rng(4).dirichlet(np.ones(3), 40).astype(dtype).astype(np.float64)
    rows = p.tolist()
    rows[7], rows[30] = [0.0, 0.0, 0.0], [-0.5, 0.5, 1.0]
    ids = [f"p{i}" for i in range(40)]
    times = (T0 + 10 + np.arange(40)).tolist()
    served.ok("POST", "/v1/models/m/predictions", json={"ids": ids, "predictions": rows, "timestamps": times})
    good = np.ones(40, bool)
    good[[7, 30]] = False
    table = -np.log(np.clip(p / p.sum(axis=1, keepdims=True), EPSILON, 1 - EPSILON))  # Keras CCE of class c
    expected = reference(table, p, np.ones(40), good, "keras")
    for start in (T0, T0 + 1):  # rollup cells, then the rows
        caplog.clear()
        with caplog.at_level(logging.WARNING, "service.usecases.bucket_estimates"):
            answer = served.ok("GET", f"/v1/models/m/history?start={start:.0f}&end={T0 + HOUR:.0f}&step=3600")
        estimated = answer["buckets"][0]["losses"][0]["estimated"]
        assert estimated is not None, start
        assert (estimated["predictions"], estimated["pending"]) == (38, 38)
        for key in ("mean", "low", "high"):
            assert estimated[key] == pytest.approx(expected[key], rel=rel), (start, key)
        assert estimated["pending_mean"] == pytest.approx(expected["mean"], rel=rel)
        # The operator is told which model and why, naming the first refused row's reason (row 7's).
        warned = [r.getMessage() for r in caplog.records if r.name == "service.usecases.bucket_estimates"]
        assert warned == [f"model m: pending predictions not estimated, the first: {ZERO_SUM_REFUSAL}"], start


def test_refused_pending_predictions_cost_a_bounded_number_of_evaluations(
    served: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.usecases import estimates

    calls = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(args[1]))
        return expected_losses(*args, **kwargs)

    expected_losses = estimates.expected_losses
    monkeypatch.setattr(estimates, "expected_losses", counted)
    served.ok("PUT", "/v1/models/m", json={"losses": [{"loss": "categorical_crossentropy"}], "estimate": {}})
    n = 2048  # every row refused: searching each out alone would take 2n - 1 evaluations
    rows = [[-0.5, 0.5, 1.0]] * n
    ids = [f"p{i}" for i in range(n)]
    served.ok("POST", "/v1/models/m/predictions", json={"ids": ids, "predictions": rows, "timestamps": [T0 + 10] * n})
    answer = served.ok("GET", f"/v1/models/m/history?start={T0 + 1:.0f}&end={T0 + HOUR:.0f}&step=3600")
    assert answer["buckets"][0]["losses"][0]["estimated"] is None
    assert 0 < len(calls) <= 2 * estimates.REFUSED_ROWS * (np.log2(n) + 1)


def test_a_joining_pair_with_no_expected_loss_leaves_the_others_of_its_batch_their_moments(served: Client) -> None:
    # Labelled 0, [1e308, -1e308, 0] has a finite loss; as class 1 its loss overflows, so it has
    # no expected loss. The other pairs of the labels log keep theirs.
    config = {"losses": [{"loss": "sparse_categorical_crossentropy", "options": {"from_logits": True}}], "estimate": {}}
    served.ok("PUT", "/v1/models/m", json=config)
    z = np.random.default_rng(6).normal(size=(20, 3))
    rows = z.tolist()
    rows[3] = [1e308, -1e308, 0.0]
    ids = [f"p{i}" for i in range(20)]
    times = (T0 + 10 + np.arange(20)).tolist()
    served.ok("POST", "/v1/models/m/predictions", json={"ids": ids, "predictions": rows, "timestamps": times})
    weights = np.random.default_rng(7).uniform(0.5, 2.0, 20)
    labels = {"ids": ids, "labels": [0] * 20, "sample_weight": weights.tolist()}
    assert served.ok("POST", "/v1/models/m/labels", json=labels)["joined"] == 20
    good = np.arange(20) != 3
    expected = reference(scce_table(z), softmax(z), weights, good, "keras")
    for start in (T0, T0 + 1):  # rollup cells, then the rows
        answer = served.ok("GET", f"/v1/models/m/history?start={start:.0f}&end={T0 + HOUR:.0f}&step=3600")
        estimated = answer["buckets"][0]["losses"][0]["estimated"]
        assert estimated is not None, start
        assert (estimated["predictions"], estimated["pending"]) == (19, 0)
        for key in ("mean", "low", "high"):
            assert estimated[key] == pytest.approx(expected[key], rel=1e-9), (start, key)


@pytest.mark.parametrize(
    ("totals", "aggregate", "expected"),
    [
        # n, E[S], Var S, E[D], Var D, Cov(S, D): a fixed denominator, a mean: S/D ± 3 sqrt(Var S)/D
        ((4, 2.0, 0.36, 4.0, 0.0, 0.0), "mean", (0.5, 0.5 - 3 * 0.15, 0.5 + 3 * 0.15)),
        ((4, 2.0, 0.36, 4.0, 0.0, 0.0), "root_mean", (0.5, 0.5 - 3 * 0.15, 0.5 + 3 * 0.15)),
        # a sum: E[S] ± 3 sqrt(Var S)
        ((4, 2.0, 0.36, 4.0, 0.0, 0.0), "sum", (2.0, 2.0 - 3 * 0.6, 2.0 + 3 * 0.6)),
        # a varying denominator: R = 1.5, Var = 0.5 - 2 (1.5) (0.2) + 1.5² (0.1) = 0.125, sigma = sqrt(0.125) / 2
        ((3, 3.0, 0.5, 2.0, 0.1, 0.2), "mean", (1.5, 1.5 - 3 * 0.125**0.5 / 2, 1.5 + 3 * 0.125**0.5 / 2)),
        # rounding below zero: no band, never a NaN
        ((2, 1.0, 0.0, 1.0, 0.0, 1.0), "mean", (1.0, 1.0, 1.0)),
        ((2, 1.0, -1e-18, 1.0, 0.0, 0.0), "sum", (1.0, 1.0, 1.0)),
    ],
)
def test_the_band_the_metrics_show_is_three_sigma_either_side(
    totals: tuple[float, ...], aggregate: Any, expected: tuple[float, float, float]
) -> None:
    """`band` (what the /metrics estimate job shows of a cohort), against the moments worked by hand."""
    from service.usecases.bucket_estimates import band

    assert band(totals, aggregate) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_predictions_certain_of_their_class_or_a_zero_loss_leave_every_bucket_its_own_estimate(served: Client) -> None:
    """Three hours, pending rows and joined ones kept with their payloads (keep_pairs), read from the
    rollup cells and from the rows: hour 0 holds only [1e200, 0, 0], certain of class 0 (the other
    classes' probabilities underflow to 0 beside losses of 1e200, whose squares overflow: the
    variance is 0, not 0 * inf), so an estimate of 0 with no band; hour 1 twelve ordinary rows,
    six of them joined; hour 2 four rows certain of class 0 at a loss of exactly 0."""
    config = {
        "losses": [{"loss": "sparse_categorical_crossentropy", "options": {"from_logits": True}}],
        "convention": "torch",
        "keep_pairs": True,
        "estimate": {},
        "retention_seconds": 5 * DAY,
    }
    served.ok("PUT", "/v1/models/m", json=config)
    z = np.random.default_rng(9).normal(size=(12, 3)) * 2
    rows = [[1e200, 0.0, 0.0], *z.tolist(), *[[0.0, -1000.0, -1000.0]] * 4]
    times = [T0 + 10, *(T0 + HOUR + 10 + 60 * np.arange(12)).tolist(), *(T0 + 2 * HOUR + 10 + np.arange(4)).tolist()]
    ids = [f"p{i}" for i in range(len(rows))]
    served.ok("POST", "/v1/models/m/predictions", json={"ids": ids, "predictions": rows, "timestamps": times})
    served.ok("POST", "/v1/models/m/labels", json={"ids": ids[1:7], "labels": [0, 1, 2, 0, 1, 2]})
    table, belief = scce_table(z), softmax(z)
    everything = reference(table, belief, np.ones(12), np.ones(12, bool))
    waiting = reference(table, belief, np.ones(12), np.arange(12) >= 6)["mean"]
    for start in (T0, T0 + 1):  # rollup cells, then the rows
        answer = served.ok("GET", f"/v1/models/m/history?start={start:.0f}&end={T0 + 3 * HOUR:.0f}&step=3600")
        first, second, third = (bucket["losses"][0]["estimated"] for bucket in answer["buckets"])
        assert [bucket["predictions"] for bucket in answer["buckets"]] == [1, 12, 4], start
        certain = {"mean": 0.0, "low": 0.0, "high": 0.0, "pending_mean": 0.0, "predictions": 1, "pending": 1}
        assert first == certain, start
        assert second is not None, start
        assert (second["predictions"], second["pending"]) == (12, 6), start
        for key in ("mean", "low", "high"):
            assert second[key] == pytest.approx(everything[key], rel=1e-9), (start, key)
        assert second["pending_mean"] == pytest.approx(waiting, rel=1e-9), start
        zero = {"mean": 0.0, "low": 0.0, "high": 0.0, "pending_mean": 0.0, "predictions": 4, "pending": 4}
        assert third == zero, start


ISOTONIC = {"method": "isotonic", "x": [0.2, 0.5, 0.8], "y": [0.1, 0.4, 0.9], "thinned": False}


@pytest.mark.parametrize("name", ["bce-torch-logits-pos-weight", "brier-keras-probabilities"])
def test_a_fitted_isotonic_map_recalibrates_the_predictions_as_the_estimated_loss_reads_them(
    served: Client, name: str
) -> None:
    """An isotonic fit (set by hand) is the belief about each pending prediction's label: q =
    interp(clip(p, 0.2, 0.8)) of its P(class 1), p the sigmoid of the logits for a loss bound with
    from_logits under the model's convention (pos_weight is an option of torch's alone), the
    probability itself for a loss without from_logits (brier_score)."""
    n = 30
    rng = np.random.default_rng(13)
    if name == "bce-torch-logits-pos-weight":
        z = rng.normal(size=n) * 2
        p, logged = 1 / (1 + np.exp(-z)), z
        options = {"from_logits": True, "pos_weight": 2.0}
        config = {"losses": [{"loss": "binary_crossentropy", "options": options}], "convention": "torch"}
        table = np.stack([-np.log(1 - p), -2.0 * np.log(p)], axis=1)  # class 1's term weighed by pos_weight
    else:
        p = rng.uniform(0.02, 0.98, n)
        logged = p
        config = {"losses": [{"loss": "brier_score"}], "convention": "keras"}
        table = np.stack([p**2, (1 - p) ** 2], axis=1)  # scikit-learn's, halved for two classes: (c - p)^2
    model = {**config, "keep_pairs": True, "estimate": {"calibration": "isotonic"}, "retention_seconds": 5 * DAY}
    served.ok("PUT", "/v1/models/m", json=model)
    ids = [f"p{i}" for i in range(n)]
    times = (T0 + 10 + np.arange(n)).tolist()
    body = {"ids": ids, "predictions": logged.tolist(), "timestamps": times}
    served.ok("POST", "/v1/models/m/predictions", json=body)
    fit = {"calibration": "isotonic", "parameters": ISOTONIC}
    with served.store.database.transaction() as tx:
        tx.execute("UPDATE loss_models SET estimate_fit = ? WHERE name = 'm'", [orjson.dumps(fit).decode()])
    q = np.interp(np.clip(p, 0.2, 0.8), ISOTONIC["x"], ISOTONIC["y"])
    expected = reference(table, np.stack([1 - q, q], axis=1), np.ones(n), np.ones(n, bool), config["convention"])
    for start in (T0, T0 + 1):  # rollup cells, then the rows
        answer = served.ok("GET", f"/v1/models/m/history?start={start:.0f}&end={T0 + HOUR:.0f}&step=3600")
        estimated = answer["buckets"][0]["losses"][0]["estimated"]
        assert estimated is not None, start
        assert estimated["predictions"] == n
        for key in ("mean", "low", "high"):
            assert estimated[key] == pytest.approx(expected[key], rel=1e-9), (start, key)


def test_a_float32_models_estimate_is_of_its_loss_in_float32(served: Client) -> None:
    """Keras clips probabilities to [1e-7, 1 - 1e-7] in the working dtype: in float32 1 - 1e-7 rounds
    to 1 - 2**-23, so a certain prediction (0 or 1: its own belief is certain of that class) expects
    -log(1 - 2**-23) ~ 2**-23, not float64's -log(1 - 1e-7) ~ 1.00000005e-7, and no spread."""
    config = {"losses": [{"loss": "binary_crossentropy"}], "convention": "keras", "dtype": "float32", "estimate": {}}
    served.ok("PUT", "/v1/models/m", json=config)
    ids = [f"p{i}" for i in range(10)]
    rows = [0.0, 1.0] * 5
    served.ok("POST", "/v1/models/m/predictions", json={"ids": ids, "predictions": rows, "timestamps": [T0 + 10] * 10})
    for start in (T0, T0 + 1):  # rollup cells, then the rows
        answer = served.ok("GET", f"/v1/models/m/history?start={start:.0f}&end={T0 + HOUR:.0f}&step=3600")
        estimated = answer["buckets"][0]["losses"][0]["estimated"]
        assert estimated["mean"] == pytest.approx(2**-23, rel=1e-6), start
        assert estimated["low"] == estimated["high"] == estimated["mean"], start


def test_past_the_refused_rows_searched_for_a_refused_part_is_left_out_whole(served: Client) -> None:
    """4k pending rows, k = REFUSED_ROWS, halved as the search halves them: [0, 2k) good, estimated
    at once; [2k, 3k) refused, each searched out alone (k rows found); [3k, 4k) refused for its
    first row only, but found once k rows were: left out whole, its good rows with it."""
    from service.usecases.estimates import REFUSED_ROWS

    k = REFUSED_ROWS
    served.ok("PUT", "/v1/models/m", json={"losses": [{"loss": "categorical_crossentropy"}], "estimate": {}})
    p = np.random.default_rng(5).dirichlet(np.ones(3), 4 * k)
    rows = p.tolist()
    for i in range(2 * k, 3 * k + 1):
        rows[i] = [-0.5, 0.5, 1.0]  # outside [0, 1]: accepted while pending, refused by the engine
    ids = [f"p{i:03d}" for i in range(4 * k)]
    times = (T0 + 10 + np.arange(4 * k)).tolist()
    served.ok("POST", "/v1/models/m/predictions", json={"ids": ids, "predictions": rows, "timestamps": times})
    table = -np.log(np.clip(p, EPSILON, 1 - EPSILON))  # Keras CCE of class c
    expected = reference(table, p, np.ones(4 * k), np.arange(4 * k) < 2 * k, "keras")
    for start in (T0, T0 + 1):  # rollup cells, then the rows
        answer = served.ok("GET", f"/v1/models/m/history?start={start:.0f}&end={T0 + HOUR:.0f}&step=3600")
        estimated = answer["buckets"][0]["losses"][0]["estimated"]
        assert (estimated["predictions"], estimated["pending"]) == (2 * k, 2 * k), start
        assert estimated["mean"] == pytest.approx(expected["mean"], rel=1e-9), start
