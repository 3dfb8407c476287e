"""The catboost convention against CatBoost's own `get_evals_result()`.

The committed fixture (tests/fixtures/catboost_reference.json, from
tests/reference/generate_catboost_fixtures.py: CatBoost 1.2.10, 60 cases) runs everywhere; the live
comparison trains the same seeded models where catboost is installed. Every metric, unweighted and
weighted, binary and 3 classes, on `predict`'s output and on raw values (RawFormulaVal).

Tolerances (float64): CatBoost computes every value in double from float32 labels and weights, as
the engine does, so on raw values the engine agrees to rounding (measured at most 3.7e-16
relative; allowed 1e-14), and on the regressions' and exp-link metrics' `predict` output too
(log(exp(a)) is a within an ulp: measured 3.5e-16). Class probabilities are allowed 1e-9 (the
issue's bound): predict rounds p = sigmoid(a) to a double, which moves the raw value by up to
ulp(p) / (p (1 - p)); for the separable model (raw values near +-11, 1 - p ~ 2e-5) that is ~1e-11
per object, measured 2.4e-12 relative on the mean (test_probability_rounding_explains_the_gap).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.config import Settings
from service.engine import LossInputError, compute, libraries, loss_name
from service.server.api.schemas import loss_request_adapter
from service.server.app import create_app
from tests.boosted import assert_refused, first_case

FIXTURE = json.loads((Path(__file__).parent.parent / "fixtures" / "catboost_reference.json").read_text())
CASES: list[dict[str, Any]] = FIXTURE["cases"]
RAW_TOLERANCE = 1e-14
PROBABILITY_TOLERANCE = 1e-9
CLASSIFIERS = {"Logloss", "CrossEntropy", "MultiClass"}
F32 = np.float32


def _options(case: dict[str, Any]) -> dict[str, Any]:
    """The metric's parameters as CatBoost writes them, and margin (loss_function is the model's)."""
    return {**{k: v for k, v in case["options"].items() if k != "loss_function"}, "margin": case["margin"]}


def _name(case: dict[str, Any]) -> str:
    """The metric as CatBoost records it: Quantile:alpha=0.3, Tweedie:variance_power=1.5."""
    parameters = {k: v for k, v in case["options"].items() if k != "loss_function"}
    return case["metric"] + "".join(f":{k}={v:g}" for k, v in parameters.items())


def _case_id(case: dict[str, Any]) -> str:
    return "-".join(
        [
            _name(case),
            case["options"]["loss_function"].split(":")[0],
            "weighted" if case["sample_weight"] is not None else "unweighted",
            "raw" if case["margin"] else "predict",
        ]
    )


def _tolerance(case: dict[str, Any]) -> float:
    return PROBABILITY_TOLERANCE if case["metric"] in CLASSIFIERS and not case["margin"] else RAW_TOLERANCE


def _check(case: dict[str, Any]) -> None:
    arrays = {"predictions": case["predictions"], "labels": case["labels"], "sample_weight": case["sample_weight"]}
    by_name = compute(_name(case), **arrays, options={"margin": case["margin"]}, convention="catboost")
    by_options = compute(case["metric"], **arrays, options=_options(case), convention="catboost")
    for reduced in (by_name, by_options):
        assert reduced.mean == pytest.approx(case["expected"], rel=_tolerance(case), abs=0), case["expected"]
        assert reduced.aggregate == ("root_mean" if case["metric"] == "RMSE" else "mean")
    assert loss_name(case["metric"], "catboost", _options(case)) == _name(case)  # get_evals_result()'s key


def test_the_fixture_covers_every_metric_weighted_and_unweighted_on_predict_and_raw_values() -> None:
    assert (FIXTURE["library"], FIXTURE["version"]) == ("catboost", "1.2.10")
    covered = {(c["metric"], c["sample_weight"] is not None, c["margin"]) for c in CASES}
    names = {m.name for m in libraries.metrics("catboost")}
    assert covered == {(n, w, m) for n in names for w in (False, True) for m in (False, True)}
    assert {len(c["predictions"][0]) for c in CASES if c["metric"] == "MultiClass"} == {3}
    soft = [c for c in CASES if c["metric"] == "Logloss" and c["options"]["loss_function"] == "CrossEntropy"]
    assert soft
    assert any(0 < y < 1 for y in soft[0]["labels"])  # Logloss on soft labels: binarised


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_the_engine_reproduces_the_recorded_evaluation(case: dict[str, Any]) -> None:
    _check(case)


def test_predict_probas_two_columns_give_the_positive_columns_answer() -> None:
    for case in (c for c in CASES if c["metric"] in ("Logloss", "CrossEntropy") and not c["margin"]):
        p = np.asarray(case["predictions"])
        columns = np.stack([1 - p, p], axis=1)  # CatBoost's [1 - p, p]
        both = compute(
            case["metric"], columns, case["labels"], sample_weight=case["sample_weight"], convention="catboost"
        )
        one = compute(case["metric"], p, case["labels"], sample_weight=case["sample_weight"], convention="catboost")
        assert both.mean == one.mean


def test_probability_rounding_explains_the_gap() -> None:
    """The probability cases' error is within what computing p in double allows: p = 1 / (1 + exp(-a))
    is within 2 ulp (exp, add, divide), and a change of p changes an object's loss by |p - t| / (p (1 - p))
    times it."""
    for case in (c for c in CASES if c["metric"] in ("Logloss", "CrossEntropy") and not c["margin"]):
        p = np.asarray(case["predictions"])
        y = np.asarray(case["labels"], dtype=F32).astype(np.float64)
        t = (y > 0.5).astype(np.float64) if case["metric"] == "Logloss" else y
        w = np.ones_like(p) if case["sample_weight"] is None else np.asarray(case["sample_weight"], F32)
        bound = np.sum(w * 2 * np.spacing(p) * np.abs(p - t) / (p * (1 - p))) / np.sum(w) + 4e-16 * case["expected"]
        got = compute(case["metric"], p, case["labels"], sample_weight=case["sample_weight"], convention="catboost")
        assert abs(got.mean - case["expected"]) <= bound
        assert bound / case["expected"] < PROBABILITY_TOLERANCE


def test_live_models_match_catboost() -> None:
    pytest.importorskip("catboost", reason="live CatBoost comparisons need catboost")
    from tests.reference.generate_catboost_fixtures import build

    live = build()
    assert len(live) == len(CASES)
    for case in live:
        _check(case)


# -- CatBoost's constants and float32 numbers: mutations these catch --------------------------------


def test_mae_subtracts_catboosts_dead_zone() -> None:
    # |e| - 1e-6 beyond the zone, 0 inside, 1e-6 at its edge (CatBoost moves only |e| > delta)
    reduced = compute("MAE", [0.0, 0.0, 0.0, 0.0], [1.0, 5e-7, -2.0, 0.0], convention="catboost")
    np.testing.assert_array_equal(reduced.per_sample, [1.0 - 1e-6, 0.0, 2.0 - 1e-6, 0.0])
    edge = compute("MAE", [-1e-6, 0.0], [0.0, 0.0], convention="catboost")  # e = 1e-6 exactly: not moved
    np.testing.assert_array_equal(edge.per_sample, [1e-6, 0.0])
    quantile = compute("Quantile:alpha=0.3", [0.0, 0.0], [1.0, -1.0], convention="catboost")
    np.testing.assert_allclose(quantile.per_sample, [0.3 * (1 - 1e-6), 0.7 * (1 - 1e-6)], rtol=1e-15)
    wider = compute("Quantile:alpha=0.3;delta=0.01", [0.0, 0.0], [1.0, 0.005], convention="catboost")
    np.testing.assert_allclose(wider.per_sample, [0.3 * 0.99, 0.0], rtol=1e-15)
    assert loss_name("Quantile:alpha=0.3;delta=0.01", "catboost") == "Quantile:alpha=0.3;delta=0.01"
    assert loss_name("Quantile", "catboost") == "Quantile:alpha=0.5"  # as get_evals_result() keys it


def test_logloss_binarises_soft_labels_at_the_border_and_crossentropy_keeps_them() -> None:
    raw, labels = [0.4, 0.4, 0.4], [0.7, 0.5, 0.2]
    logloss = compute("Logloss", raw, labels, options={"margin": True}, convention="catboost")
    t = np.array([1.0, 0.0, 0.0])  # 0.5 is not above the border
    np.testing.assert_allclose(logloss.per_sample, np.log1p(np.exp(0.4)) - t * 0.4, rtol=1e-15)
    soft = compute("CrossEntropy", raw, labels, options={"margin": True}, convention="catboost")
    y = np.array(labels, dtype=F32).astype(np.float64)
    np.testing.assert_allclose(soft.per_sample, np.log1p(np.exp(0.4)) - y * 0.4, rtol=1e-15)


def test_tweedie_reads_its_power_as_float32() -> None:
    a, y = np.array([0.3, -1.2, 2.0]), np.array([1.0, 0.0, 6.5])
    got = compute("Tweedie:variance_power=1.3", a, y, options={"margin": True}, convention="catboost").mean

    def mean(rho: float) -> float:
        return float(np.mean(-y * np.exp((1 - rho) * a) / (1 - rho) + np.exp((2 - rho) * a) / (2 - rho)))

    assert got == pytest.approx(mean(float(F32(1.3))), rel=1e-15)
    assert abs(got - mean(1.3)) / abs(got) > 1e-8  # the double power is measurably another number


def test_labels_and_weights_are_catboosts_float32_and_the_mean_divides_by_their_sum() -> None:
    reduced = compute("MAE", [0.0, 0.0], [1.0, 3.0], sample_weight=[0.1, 0.3], convention="catboost")
    w = np.array([0.1, 0.3], dtype=F32).astype(np.float64)
    assert reduced.denominator == w.sum()
    assert reduced.mean == pytest.approx(((1 - 1e-6) * w[0] + (3 - 1e-6) * w[1]) / w.sum(), rel=1e-15)
    assert compute("RMSE", [0.0], [0.1], convention="catboost").mean == float(F32(0.1))


def test_rmse_is_the_root_of_the_weighted_mean() -> None:
    rng = np.random.default_rng(3)
    p, y, w = rng.normal(size=30), rng.normal(size=30).astype(F32), rng.uniform(0.5, 2, 30).astype(F32)
    reduced = compute("RMSE", p, y, sample_weight=w, convention="catboost")
    assert reduced.aggregate == "root_mean"
    assert reduced.mean == pytest.approx(math.sqrt(np.sum(w * (p - y) ** 2) / np.sum(w.astype(np.float64))), rel=1e-14)


def test_extreme_raw_values_stay_finite_or_are_refused() -> None:
    far = compute("Logloss", [800.0, -800.0], [0.0, 1.0], options={"margin": True}, convention="catboost")
    assert far.mean == 800.0  # CatBoost's (1 - t) a where e^a overflows
    multi = compute("MultiClass", [[1e4, 0.0, -1e4]], [2], options={"margin": True}, convention="catboost")
    assert multi.mean == 2e4
    for loss in ("Poisson", "Tweedie:variance_power=1.5"):
        with pytest.raises(LossInputError) as caught:
            compute(loss, [1.0, 2000.0], [1.0, 1.0], options={"margin": True}, convention="catboost")
        assert (caught.value.field, caught.value.index) == ("predictions", (1,))


# -- refusals: each names its field, index and reason -----------------------------------------------


@pytest.mark.parametrize(
    ("loss", "predictions", "labels", "options", "field", "index", "reason"),
    [
        ("logloss", [0.5], [1.0], {}, "loss", (), "'logloss' is XGBoost's metric: convention 'xgboost'"),
        ("Huber", [0.5], [1.0], {}, "loss", (), "convention 'catboost' accepts: Logloss, CrossEntropy, MultiClass"),
        ("mse", [0.5], [1.0], {}, "loss", (), "'mse' is a catalogue loss"),
        ("Quantile@0.3", [0.5], [1.0], {}, "loss", (), "is no CatBoost metric"),
        ("Quantile:alpha", [0.5], [1.0], {}, "loss", (), "write the parameters as Quantile:key=value;key=value"),
        ("Quantile:alpha=high", [0.5], [1.0], {}, "loss", (), "alpha must be a number, got 'high'"),
        ("Quantile:alpha=inf", [0.5], [1.0], {}, "loss", (), "alpha must be a number"),
        ("Quantile:alpha=0.3;alpha=0.4", [0.5], [1.0], {}, "loss", (), "sets alpha twice"),
        ("Quantile:use_weights=0", [0.5], [1.0], {}, "loss", (), "its parameters: alpha, delta"),
        ("Quantile:alpha=1.5", [0.5], [1.0], {}, "options.alpha", (), "<= 1"),
        ("Quantile:delta=0.1", [0.5], [1.0], {}, "options.delta", (), "<= 0.01"),
        ("Quantile:alpha=0.3", [0.5], [1.0], {"alpha": 0.2}, "options.alpha", (), "give it once"),
        ("RMSE:alpha=0.3", [0.5], [1.0], {}, "loss", (), "takes no parameters"),
        ("Tweedie", [0.5], [1.0], {}, "loss", (), "Tweedie:variance_power=1.5"),
        ("Tweedie:variance_power=2", [0.5], [1.0], {}, "options.variance_power", (), "< 2"),
        ("Logloss", [0.5], [1.0], {"tweedie_variance_power": 1.5}, "options.tweedie_variance_power", (), "margin"),
        ("Logloss", [0.5], [1.0], {"from_logits": True}, "options.from_logits", (), "its options: margin"),
        ("Logloss", [0.5, 0.2], [1.0, 1.5], {}, "labels", (1,), "must lie in [0, 1]"),
        ("CrossEntropy", [0.5, 0.2], [1.0, -0.1], {}, "labels", (1,), "must lie in [0, 1]"),
        ("Logloss", [0.5, 1.0], [1.0, 0.0], {}, "predictions", (1,), "strictly between 0 and 1"),
        ("Logloss", [[0.5, 0.5], [0.3, 0.6]], [1.0, 0.0], {}, "predictions", (1,), "[1 - p, p]"),
        ("Logloss", [[0.5, 0.5, 0.0]], [1.0], {}, "predictions", (), "or [1, 2]"),
        ("MultiClass", [[0.5, 0.5]], [2], {}, "labels", (0,), "outside [0, 1]"),
        ("MultiClass", [[0.5, 0.5], [1.0, 0.0]], [0, 1], {}, "predictions", (1, 1), "probability 0"),
        ("MultiClass", [0.5, 0.5], [0, 1], {}, "predictions", (), "(N, C) and (N,)"),
        ("Poisson", [1.0, 2.0], [1.0, -1.0], {}, "labels", (1,), "Poisson counts must be >= 0"),
        ("Poisson", [1.0, 0.0], [1.0, 1.0], {}, "predictions", (1,), "must be > 0"),
        ("Tweedie:variance_power=1.5", [1.0, -2.0], [1.0, 1.0], {}, "predictions", (1,), "must be > 0"),
        ("Tweedie:variance_power=1.5", [1.0, 2.0], [1.0, -1.0], {}, "labels", (1,), "must be >= 0"),
        ("RMSE", [1.0, 2.0], [1.0, 1e39], {}, "labels", (1,), "overflows float32"),
        ("RMSE", [1.0], [1.0], {}, "sample_weight", (), "sum to 0"),
    ],
)
def test_refusals_name_field_index_and_reason(
    loss: str, predictions: Any, labels: Any, options: Any, field: str, index: Any, reason: str
) -> None:
    assert_refused("catboost", loss, predictions, labels, options, field, index, reason)


# -- the HTTP API, OIP and stored model configurations -----------------------------------------------


def _first(name: str, *, weighted: bool = True, margin: bool = False) -> dict[str, Any]:
    return first_case(CASES, name, weighted=weighted, margin=margin, name_of=_name)


NAMES = [
    "Logloss",
    "CrossEntropy",
    "MultiClass",
    "RMSE",
    "MAE",
    "Quantile:alpha=0.3",
    "Poisson",
    "Tweedie:variance_power=1.3",
]


@pytest.mark.anyio
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("margin", [False, True])
async def test_v1_loss_answers_the_recorded_evaluation(api: httpx.AsyncClient, name: str, margin: bool) -> None:
    case = _first(name, margin=margin)
    body = {
        "loss": name,
        "convention": "catboost",
        "predictions": case["predictions"],
        "labels": case["labels"],
        "sample_weight": case["sample_weight"],
        "options": {"margin": margin},
    }
    response = await api.post("/v1/loss", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["loss"], answer["convention"]) == (name, "catboost")
    assert answer["mean"] == pytest.approx(case["expected"], rel=_tolerance(case), abs=0)
    assert answer["aggregate"] == ("root_mean" if name == "RMSE" else "mean")


@pytest.mark.anyio
async def test_v1_evaluate_and_oip_take_catboost_metrics(api: httpx.AsyncClient) -> None:
    case = _first("Quantile:alpha=0.3")
    arrays = {"predictions": case["predictions"], "labels": case["labels"], "sample_weight": case["sample_weight"]}
    losses = [{"loss": "Quantile:alpha=0.3"}, {"loss": "Quantile", "options": {"alpha": 0.3}}, {"loss": "RMSE"}]
    response = await api.post("/v1/evaluate", json={**arrays, "convention": "catboost", "losses": losses})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["loss"] for r in results] == ["Quantile:alpha=0.3", "Quantile:alpha=0.3", "RMSE"]
    assert results[0]["mean"] == results[1]["mean"] == pytest.approx(case["expected"], rel=RAW_TOLERANCE)
    assert [r["aggregate"] for r in results] == ["mean", "mean", "root_mean"]
    refused = await api.post(
        "/v1/evaluate",
        json={**arrays, "convention": "catboost", "losses": [{"loss": "MAE"}, {"loss": "Quantile:alpha=x"}]},
    )
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["loc"] == ["body", "losses", 1, "loss"]
    assert "alpha must be a number, got 'x'" in refused.json()["errors"][0]["msg"]

    tweedie = _first("Tweedie:variance_power=1.5", weighted=False, margin=True)
    n = len(tweedie["predictions"])
    oip = {
        "inputs": [
            {"name": "predictions", "shape": [n], "datatype": "FP64", "data": tweedie["predictions"]},
            {"name": "labels", "shape": [n], "datatype": "FP64", "data": tweedie["labels"]},
        ],
        "parameters": {"convention": "catboost", "margin": True},
    }
    response = await api.post("/v2/models/Tweedie:variance_power=1.5/infer", json=oip)
    assert response.status_code == 200, response.text
    mean = next(o for o in response.json()["outputs"] if o["name"] == "mean")
    assert mean["data"][0] == pytest.approx(tweedie["expected"], rel=RAW_TOLERANCE)


@pytest.mark.anyio
@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
async def test_stored_model_configurations_compute_every_kind_of_catboost_metric(
    request: pytest.FixtureRequest, tmp_path: Path, store: str
) -> None:
    url = f"sqlite:///{tmp_path}/store.sqlite3" if store == "sqlite" else str(request.getfixturevalue("postgres_url"))
    app = create_app(Settings(store_url=url))
    # one model per kind of metric: binary, multi-class, root mean, dead zone with parameters, exp link
    models = {
        "binary": (["Logloss", "CrossEntropy"], False),
        "classes": (["MultiClass"], True),
        "regression": (["RMSE", "MAE", "Quantile:alpha=0.3"], False),
        "counts": (["Poisson"], True),
        "amounts": (["Tweedie:variance_power=1.3"], False),
    }
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://loss-service") as api:
            for model, (names, margin) in models.items():
                losses = [{"loss": name, "options": {"margin": margin}} for name in names]
                response = await api.put(f"/v1/models/{model}", json={"convention": "catboost", "losses": losses})
                assert response.status_code == 200, response.text
                assert [entry["loss"] for entry in response.json()["losses"]] == names  # kept as written
                case = _first(names[-1], weighted=False, margin=margin)
                ids = list(range(len(case["labels"])))
                logged = await api.post(
                    f"/v1/models/{model}/predictions", json={"ids": ids, "predictions": case["predictions"]}
                )
                assert logged.status_code < 300, logged.text
                answered = await api.post(f"/v1/models/{model}/labels", json={"ids": ids, "labels": case["labels"]})
                assert answered.status_code == 200, answered.text
                results = answered.json()["results"]
                assert [r["loss"] for r in results] == names
                last = results[-1]
                assert last["mean"] == pytest.approx(case["expected"], rel=_tolerance(case), abs=0), model
                assert all(math.isfinite(r["mean"]) for r in results)
            bad = await api.put(
                "/v1/models/other", json={"convention": "catboost", "losses": [{"loss": "Quantile:beta=1"}]}
            )
            assert bad.status_code == 422
            assert bad.json()["errors"][0]["loc"] == ["body", "losses", 0, "loss"]


def test_the_request_union_routes_catboost_names_with_parameters() -> None:
    adapter = loss_request_adapter()
    base = {"predictions": [0.5], "labels": [1.0], "convention": "catboost"}
    assert type(adapter.validate_python({**base, "loss": "Quantile:alpha=0.3"})).__name__ == "QuantileCatboostRequest"
    assert type(adapter.validate_python({**base, "loss": "MAE"})).__name__ == "MaeCatboostRequest"


@pytest.mark.anyio
async def test_the_convention_endpoint_lists_the_table(api: httpx.AsyncClient) -> None:
    response = await api.get("/v1/conventions/catboost")
    assert response.status_code == 200
    listed = {m["metric"]: m for m in response.json()["metrics"]}
    assert list(listed) == [m.name for m in libraries.metrics("catboost")]
    assert set(listed) == {"Logloss", "CrossEntropy", "MultiClass", "RMSE", "MAE", "Quantile", "Poisson", "Tweedie"}
    assert (listed["RMSE"]["aggregate"], listed["RMSE"]["loss"]) == ("root_mean", "mean_squared_error")
    assert (listed["MAE"]["loss"], listed["Poisson"]["loss"], listed["Tweedie"]["loss"]) == (
        "mean_absolute_error",
        "poisson_nll",
        None,
    )
    entry = (await api.get("/v1/losses/pinball")).json()
    assert {"convention": "catboost", "metric": "Quantile"}.items() <= entry["library_metrics"][-1].items()
