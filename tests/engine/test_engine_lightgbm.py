"""The lightgbm convention against LightGBM's own `record_evaluation`.

The committed fixture (tests/fixtures/lightgbm_reference.json, 112 cases from
tests/reference/generate_lightgbm_fixtures.py, LightGBM 4.7.0 with one thread) runs everywhere;
the live comparison retrains the fixture's models, and a few more, where lightgbm is installed.
Every metric, unweighted and weighted, on `predict`'s output and on raw scores.

Tolerances. LightGBM computes in double from float32 labels and weights; so does the table in
float64. The engine's NumPy log/exp and pairwise sums differ from the C library's and LightGBM's
sequential loop by ulps: measured at most 6e-16 relative on the mean over the fixture. Allowed
1e-13 (the issue asks for 1e-9), far below what each mistake below moves: a wrong constant or
float64 labels move the mean by 1e-11 to 1e-2. The 0/1 error rates are compared exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.config import Settings
from service.engine import LossInputError, compute, libraries, loss_name
from service.engine.libraries import base
from service.engine.libraries.lightgbm import classification, cross_entropy, deviance, objectives, regression
from service.server.app import create_app
from service.values.results import Totals, combine
from tests.boosted import assert_refused, first_case

FIXTURE = json.loads((Path(__file__).parent.parent / "fixtures" / "lightgbm_reference.json").read_text())
CASES: list[dict[str, Any]] = FIXTURE["cases"]
TOLERANCE = 1e-13
EXACT = {"binary_error", "multi_error"}


def _name(case: dict[str, Any]) -> str:
    k = case["options"].get("multi_error_top_k", 1)
    return case["metric"] if k == 1 else f"{case['metric']}@{k}"


def request(case: dict[str, Any]) -> dict[str, Any]:
    """A fixture case as compute's arguments: the metric's own options of the model's parameters
    (the objective and sigmoid only with raw scores; num_class is the predictions' width)."""
    found, _ = libraries.lookup("lightgbm", case["metric"])
    own = {o.name for o in found.spec.options} - {"multi_error_top_k"}
    options = {k: v for k, v in case["options"].items() if k in own}
    if not case["margin"]:
        options = {k: v for k, v in options.items() if k not in ("objective", "sigmoid")}
    return {
        "loss": _name(case),
        "predictions": case["predictions"],
        "labels": case["labels"],
        "sample_weight": case["sample_weight"],
        "options": {**options, "margin": case["margin"]},
        "convention": "lightgbm",
    }


def _agrees(case: dict[str, Any]) -> bool:
    try:
        got = compute(**request(case)).mean
    except LossInputError:
        return False
    if case["metric"] in EXACT:
        return got == case["expected"]
    return math.isclose(got, case["expected"], rel_tol=TOLERANCE, abs_tol=0.0)


def _case_id(case: dict[str, Any]) -> str:
    options = ",".join(f"{k}={v}" for k, v in case["options"].items() if k != "num_class")
    weighted = "weighted" if case["sample_weight"] is not None else "plain"
    return f"{_name(case)}[{options}]-{'margin' if case['margin'] else 'predict'}-{weighted}"


def test_the_fixture_covers_every_metric_weighted_and_unweighted_on_probabilities_and_margins() -> None:
    assert FIXTURE["library"] == "lightgbm"
    covered = {(c["metric"], c["sample_weight"] is not None, c["margin"]) for c in CASES}
    names = {m.name for m in libraries.metrics("lightgbm")}
    assert covered == {(n, w, m) for n in names for w in (False, True) for m in (False, True)}
    assert {len(c["predictions"][0]) for c in CASES if c["metric"] == "multi_logloss"} == {3}


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_the_engine_reproduces_the_recorded_evaluation(case: dict[str, Any]) -> None:
    reduced = compute(**request(case))
    if case["metric"] in EXACT:
        assert reduced.mean == case["expected"]
    else:
        assert reduced.mean == pytest.approx(case["expected"], rel=TOLERANCE, abs=0.0)
    kinds = {"rmse": "root_mean", "gamma_deviance": "sum"}
    assert reduced.aggregate == kinds.get(case["metric"], "mean")
    assert loss_name(_name(case), "lightgbm", request(case)["options"]) == _name(case)  # record_evaluation's key


# -- mistakes a table author could make: each makes some fixture case disagree ---------------------


# The LightGBM table's modules: a constant imported from `objectives` is a name in each that uses it.
TABLE_MODULES = (objectives, classification, cross_entropy, regression, deviance)


def _some_case_disagrees() -> bool:
    return not all(_agrees(c) for c in CASES)


@pytest.mark.parametrize(
    ("constant", "value"),
    [
        ("CLIPPED_LOG", math.log(1e-15)),  # -log(kEpsilon) in double (it is logf: a float32 value)
        ("K_EPSILON", 1e-7),  # Keras's epsilon
        ("XENT_EPS", 1e-15),  # cross_entropy's clip as kEpsilon (it is the double 1e-12)
        ("RATE_FLOOR", 1e-10),  # Poisson/Tweedie floor as the double 1e-10 (it is 1e-10f)
        ("GAMMA_DEVIANCE_EPS", 0.0),  # gamma_deviance without its 1e-9
    ],
)
def test_a_wrong_constant_is_caught(constant: str, value: float, monkeypatch: pytest.MonkeyPatch) -> None:
    holders = [module for module in TABLE_MODULES if hasattr(module, constant)]  # each import binds its own name
    assert holders
    for module in holders:
        monkeypatch.setattr(module, constant, value)
    assert _some_case_disagrees()


def _mutate(monkeypatch: pytest.MonkeyPatch, names: list[str], **changes: Any) -> None:
    for name in names:
        table = base._TABLES["lightgbm"]
        monkeypatch.setitem(table, name, dataclasses.replace(table[name], **changes))


def test_float64_labels_and_weights_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """LightGBM's label_t is float: the fixture's float64 labels (and weights) differ in float32."""
    _mutate(monkeypatch, [m.name for m in libraries.metrics("lightgbm")], float32_targets=False)
    failing = {c["metric"] for c in CASES if not _agrees(c)}
    # every metric whose labels are not 0/1 or class indices, and every weighted case
    assert {"l2", "rmse", "l1", "mape", "quantile", "huber", "fair", "gamma", "cross_entropy"} <= failing


def test_float32_labels_alone_are_not_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    """The weights are float32 too: binary labels are exact in float32, so only the weights tell."""
    _mutate(monkeypatch, ["binary_logloss"], float32_targets=False)
    weighted = [c for c in CASES if c["metric"] == "binary_logloss" and c["sample_weight"] is not None]
    assert not all(_agrees(c) for c in weighted)


def test_count_instead_of_weight_sum_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    names = [m.name for m in libraries.metrics("lightgbm") if m.name != "gamma_deviance"]
    _mutate(monkeypatch, names, weight_sum=lambda w: float(w.size))
    for metric in names:
        weighted = [c for c in CASES if c["metric"] == metric and c["sample_weight"] is not None]
        assert not any(_agrees(c) for c in weighted), metric


def test_cross_entropy_weights_summed_in_double_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    _mutate(monkeypatch, ["cross_entropy", "kullback_leibler"], weight_sum=None)
    for metric in ("cross_entropy", "kullback_leibler"):
        weighted = [c for c in CASES if c["metric"] == metric and c["sample_weight"] is not None]
        assert not all(_agrees(c) for c in weighted), metric


def test_gamma_deviance_as_a_mean_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    _mutate(monkeypatch, ["gamma_deviance"], aggregate="mean")
    assert not any(_agrees(c) for c in CASES if c["metric"] == "gamma_deviance")


def test_no_link_on_raw_scores_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(objectives, "_link", lambda x, objective, sigmoid: x)
    monkeypatch.setattr(objectives, "_softmax", lambda x: x)
    for metric in ("binary_logloss", "multi_logloss", "cross_entropy", "poisson", "gamma", "tweedie"):
        margins = [
            c for c in CASES if c["metric"] == metric and c["margin"] and c["options"]["objective"] != "quantile"
        ]
        assert not any(_agrees(c) for c in margins), metric


def test_sigmoid_ignored_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    link = objectives._link
    monkeypatch.setattr(objectives, "_link", lambda x, objective, sigmoid: link(x, objective, 1.0))
    scaled = [c for c in CASES if c["options"].get("sigmoid", 1.0) != 1.0 and c["margin"]]
    assert scaled
    assert not all(_agrees(c) for c in scaled)


def test_the_float32_details_are_each_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """`1.0f - label` in cross_entropy and gamma's SafeLog<float>(label): both float32."""
    with monkeypatch.context() as m:
        m.setattr(cross_entropy, "_complement", lambda labels: 1.0 - labels)
        assert not all(_agrees(c) for c in CASES if c["metric"] == "cross_entropy")
    with monkeypatch.context() as m:
        m.setattr(deviance, "_float32_log_residue", lambda labels: np.zeros_like(labels))
        assert not all(_agrees(c) for c in CASES if c["metric"] == "gamma")


def test_ties_against_the_true_class_count_as_errors() -> None:
    # LightGBM counts classes scoring >= the true one: a tie is wrong at k = 1, right at k = 2
    p, y = [[0.4, 0.4, 0.2], [0.5, 0.3, 0.2]], [1, 0]
    assert compute("multi_error", p, y, convention="lightgbm").mean == 0.5
    assert compute("multi_error@2", p, y, convention="lightgbm").mean == 0.0
    assert loss_name("multi_error", "lightgbm", {"multi_error_top_k": 2}) == "multi_error@2"
    # binary_error: p = 0.5 predicts the negative class
    assert compute("binary_error", [0.5, 0.5], [0.0, 1.0], convention="lightgbm").mean == 0.5


def test_logloss_clips_by_branch_at_kepsilon_with_a_float32_log() -> None:
    reduced = compute("binary_logloss", [1.0, 0.0], [0.0, 1.0], convention="lightgbm")
    assert reduced.mean == -float(np.float32(math.log(float(np.float32(1e-15)))))
    assert reduced.mean != -math.log(1e-15)
    # kEpsilon is 1e-15f = 1.0000000036e-15: a p between the double 1e-15 and it is clipped too
    between = compute("binary_logloss", [1.000000001e-15], [1.0], convention="lightgbm")
    assert between.mean == reduced.mean


# -- the mean of a sum, a root and float32 weight sums; chunks ------------------------------------


def _chunks(loss: str, p: Any, y: Any, w: Any, cuts: tuple[int, ...]) -> list[Any]:
    bounds = list(zip((0, *cuts), (*cuts, len(y)), strict=True))
    return [compute(loss, p[a:b], y[a:b], sample_weight=w[a:b], convention="lightgbm", chunk=True) for a, b in bounds]


def _recombined(parts: list[Any]) -> tuple[float, float]:
    totals = Totals()
    for r in parts:
        totals.add(r)
    return combine(parts).mean, totals.mean()  # the client; datasets and the CLI


def test_gamma_deviance_is_a_weighted_sum_and_chunks_add_their_sums() -> None:
    rng = np.random.default_rng(3)
    p, y, w = rng.uniform(0.5, 2, 60), rng.uniform(0.5, 2, 60), rng.uniform(0.1, 3.0, 60)
    whole = compute("gamma_deviance", p, y, sample_weight=w, convention="lightgbm")
    y32, w32 = y.astype(np.float32).astype(float), w.astype(np.float32).astype(float)
    t = y32 / (p + 1e-9)
    assert whole.aggregate == "sum"
    assert whole.mean == whole.sum == pytest.approx(2 * np.sum(w32 * (t - np.log(t) - 1)), rel=1e-13)
    assert whole.denominator == pytest.approx(np.sum(w32), rel=1e-15)  # reported, not divided by
    parts = _chunks("gamma_deviance", p, y, w, (25,))
    assert parts[0].mean == parts[0].sum
    for combined in _recombined(parts):
        assert combined == pytest.approx(whole.mean, rel=1e-13)
    zero = compute("gamma_deviance", p[:2], y[:2], sample_weight=[0.0, 0.0], convention="lightgbm")
    assert (zero.mean, zero.denominator) == (0.0, 0.0)  # a sum of nothing, not 0/0


def test_rmse_chunks_recombine_before_the_root() -> None:
    rng = np.random.default_rng(4)
    p, y, w = rng.normal(size=50), rng.normal(size=50), rng.uniform(0.1, 3.0, 50)
    whole = compute("rmse", p, y, sample_weight=w, convention="lightgbm")
    for combined in _recombined(_chunks("rmse", p, y, w, (20,))):
        assert combined == pytest.approx(whole.mean, rel=1e-14)


def test_cross_entropy_divides_by_the_float32_pair_sum_of_the_weights() -> None:
    rng = np.random.default_rng(5)
    for n in (1, 2, 7, 40):
        w = rng.uniform(0.1, 3.0, n)
        f = w.astype(np.float32)
        expected = np.float32(f[0]) if n % 2 else f[0] + f[1]
        for i in range(2 if n % 2 else 3, n, 2):
            expected = np.float32(expected + np.float32(f[i - 1] + f[i]))
        assert cross_entropy.float32_pair_sum(w) == float(expected)
        reduced = compute("cross_entropy", np.full(n, 0.3), np.full(n, 0.5), sample_weight=w, convention="lightgbm")
        assert reduced.denominator == float(expected)


# -- refusals: each names its field, index and reason ---------------------------------------------


@pytest.mark.parametrize(
    ("loss", "predictions", "labels", "options", "field", "index", "reason"),
    [
        ("logloss", [0.5], [1.0], {}, "loss", (), "'logloss' is XGBoost's metric: convention 'xgboost'"),
        ("auc", [0.5], [1.0], {}, "loss", (), "'auc' is no LightGBM metric; convention 'lightgbm' accepts: binary_"),
        ("xentlambda", [0.5], [1.0], {}, "loss", (), "is no LightGBM metric"),
        ("binary_crossentropy", [0.5], [1.0], {}, "loss", (), "is a catalogue loss"),
        ("quantile", [0.5], [1.0], {"quantile_alpha": 0.3}, "options.quantile_alpha", (), "its options: margin"),
        ("huber", [0.5], [1.0], {"huber_slope": 2.0}, "options.huber_slope", (), "is not an option of LightGBM's"),
        ("binary_error", [0.5], [1.0], {"threshold": 0.7}, "options.threshold", (), "is not an option"),
        ("binary_error@0.7", [0.5], [1.0], {}, "loss", (), "takes no @parameter"),
        ("multi_error@0", [[0.5, 0.5]], [1], {}, "options.multi_error_top_k", (), "must be >= 1"),
        ("multi_error@1.5", [[0.5, 0.5]], [1], {}, "loss", (), "must be an integer"),
        ("multi_error@k", [[0.5, 0.5]], [1], {}, "loss", (), "must be a number"),
        ("multi_error@2", [[0.5, 0.5]], [1], {"multi_error_top_k": 2}, "options.multi_error_top_k", (), "give it once"),
        ("binary_logloss", [0.5, 0.2], [1.0, 0.5], {}, "labels", (1,), "binary labels must be one of"),
        ("binary_logloss", [0.5, 1.2], [1.0, 0.0], {}, "predictions", (1,), "margin is false"),
        ("binary_logloss", [[0.5, 0.5]], [1.0], {}, "predictions", (), "should be (N,)"),
        ("cross_entropy", [0.5, 0.5], [0.5, 1.2], {}, "labels", (1,), "[0, 1]"),
        ("kldiv", [0.5, 0.5], [-0.1, 0.5], {}, "labels", (0,), "[0, 1]"),
        ("multi_logloss", [[0.5, 0.5]], [2], {}, "labels", (0,), "outside [0, 1]"),
        ("poisson", [1.0, 2.0], [1.0, -1.0], {}, "labels", (1,), "Poisson counts must be >= 0"),
        ("tweedie", [1.0, 2.0], [-1.0, 1.0], {}, "labels", (0,), "Tweedie labels must be >= 0"),
        ("gamma", [1.0, 2.0], [1.0, 0.0], {}, "labels", (1,), "gamma labels must be > 0"),
        ("gamma", [1.0, 0.0], [1.0, 1.0], {}, "predictions", (1,), "gamma means must be > 0"),
        ("gamma_deviance", [1.0, 2.0], [0.0, 1.0], {}, "labels", (0,), "gamma labels must be > 0"),
        ("gamma_deviance", [1.0, -2.0], [1.0, 1.0], {}, "predictions", (1,), "must be >= 0"),
        ("tweedie", [1.0], [1.0], {"tweedie_variance_power": 1.0}, "options.tweedie_variance_power", (), "> 1"),
        ("quantile", [1.0], [1.0], {"alpha": 1.0}, "options.alpha", (), "< 1"),
        ("fair", [1.0], [1.0], {"fair_c": 0.0}, "options.fair_c", (), "> 0"),
        ("l2", [1.0], [1.0], {"objective": "poisson"}, "options.objective", (), "needs margin: true"),
        ("binary_logloss", [0.5], [1.0], {"sigmoid": 2.0}, "options.sigmoid", (), "needs margin: true"),
        (
            "poisson",
            [1.0],
            [1.0],
            {"margin": True, "sigmoid": 2.0},
            "options.sigmoid",
            (),
            "objective is 'poisson'",
        ),
        ("l2", [1.0], [1.0], {"margin": True, "objective": "multiclass"}, "options.objective", (), "one per sample"),
        (
            "multi_error",
            [[1.0, 0.0]],
            [1],
            {"margin": True, "objective": "binary"},
            "options.objective",
            (),
            "per class",
        ),
        ("l2", [1.0], [1.0], {"objective": "lambdarank", "margin": True}, "options.objective", (), "must be"),
        ("poisson", [1.0, 800.0], [1.0, 1.0], {"margin": True}, "predictions", (1,), "not finite"),
        ("gamma", [1.0, -800.0], [1.0, 1.0], {"margin": True}, "predictions", (1,), "not finite"),
        ("l2", [1.0], [1e39], {}, "labels", (0,), "overflows float32"),
        ("rmse", [1.0], [1.0], {}, "sample_weight", (), "sum to 0"),
    ],
)
def test_refusals_name_field_index_and_reason(
    loss: str, predictions: Any, labels: Any, options: Any, field: str, index: Any, reason: str
) -> None:
    assert_refused("lightgbm", loss, predictions, labels, options, field, index, reason)


def test_aliases_answer_under_the_recorded_name() -> None:
    p, y = [0.2, 0.9], [0.0, 1.0]
    aliases = {
        "mse": "l2",
        "regression": "l2",
        "mae": "l1",
        "l2_root": "rmse",
        "binary": "binary_logloss",
        "xentropy": "cross_entropy",
        "kldiv": "kullback_leibler",
        "mean_absolute_percentage_error": "mape",
    }
    for alias, name in aliases.items():
        assert compute(alias, p, y, convention="lightgbm").mean == compute(name, p, y, convention="lightgbm").mean
        assert loss_name(alias, "lightgbm") == name
    assert loss_name("softmax", "lightgbm") == "multi_logloss"


# -- the HTTP API, OIP and stored model configurations --------------------------------------------


def _first(name: str, *, weighted: bool = True, margin: bool = True) -> dict[str, Any]:
    return first_case(CASES, name, weighted=weighted, margin=margin)


@pytest.mark.anyio
@pytest.mark.parametrize("metric", sorted({c["metric"] for c in CASES}))
async def test_v1_loss_answers_the_recorded_evaluation(api: httpx.AsyncClient, metric: str) -> None:
    case = request(_first(metric, margin=metric not in ("l1", "huber")))
    response = await api.post("/v1/loss", json=case)
    assert response.status_code == 200, response.text
    answer = response.json()
    expected = _first(metric, margin=metric not in ("l1", "huber"))["expected"]
    assert answer["loss"] == case["loss"]
    assert answer["mean"] == pytest.approx(expected, rel=TOLERANCE)
    assert answer["aggregate"] == {"rmse": "root_mean", "gamma_deviance": "sum"}.get(metric, "mean")
    assert answer["convention"] == "lightgbm"


@pytest.mark.anyio
async def test_v1_evaluate_takes_aliases_and_refuses_ambiguity(api: httpx.AsyncClient) -> None:
    case = _first("l2", margin=False)
    arrays = {"predictions": case["predictions"], "labels": case["labels"], "sample_weight": case["sample_weight"]}
    response = await api.post(
        "/v1/evaluate",
        json={
            **arrays,
            "convention": "lightgbm",
            "losses": [{"loss": "mse"}, {"loss": "l2_root"}, {"loss": "quantile", "options": {"alpha": 0.3}}],
        },
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["loss"] for r in results] == ["l2", "rmse", "quantile"]
    assert results[0]["mean"] == pytest.approx(case["expected"], rel=TOLERANCE)
    assert results[1]["mean"] == pytest.approx(_first("rmse", margin=False)["expected"], rel=TOLERANCE)
    assert [r["aggregate"] for r in results] == ["mean", "root_mean", "mean"]
    ambiguous = {"objective": "gamma"}  # on predict()'s output, which is already converted
    refused = await api.post(
        "/v1/evaluate",
        json={
            **arrays,
            "convention": "lightgbm",
            "losses": [{"loss": "l2"}, {"loss": "poisson", "options": ambiguous}],
        },
    )
    assert refused.status_code == 422
    error = refused.json()["errors"][0]
    assert error["loc"] == ["body", "losses", 1, "options", "objective"]
    assert "needs margin: true" in error["msg"]
    unknown = await api.post("/v1/loss", json={**arrays, "convention": "lightgbm", "loss": "logloss"})
    assert unknown.status_code == 422
    assert "'logloss' is XGBoost's metric" in unknown.json()["errors"][0]["msg"]
    xgb_option = await api.post(
        "/v1/loss", json={**arrays, "convention": "lightgbm", "loss": "quantile", "options": {"quantile_alpha": 0.3}}
    )
    assert xgb_option.status_code == 422
    assert xgb_option.json()["errors"][0]["loc"] == ["body", "options", "quantile_alpha"]


@pytest.mark.anyio
async def test_oip_answers_a_sum(api: httpx.AsyncClient) -> None:
    case = _first("gamma_deviance", weighted=False, margin=False)
    n = len(case["labels"])
    oip = {
        "inputs": [
            {"name": "predictions", "shape": [n], "datatype": "FP64", "data": case["predictions"]},
            {"name": "labels", "shape": [n], "datatype": "FP64", "data": case["labels"]},
        ],
        "parameters": {"convention": "lightgbm"},
    }
    response = await api.post("/v2/models/gamma_deviance/infer", json=oip)
    assert response.status_code == 200, response.text
    assert response.json()["parameters"]["aggregate"] == "sum"
    mean = next(o for o in response.json()["outputs"] if o["name"] == "mean")
    assert mean["data"][0] == pytest.approx(case["expected"], rel=TOLERANCE)


@pytest.mark.anyio
@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
async def test_a_stored_model_configuration_computes_lightgbm_metrics(
    request: pytest.FixtureRequest, tmp_path: Path, store: str
) -> None:
    url = f"sqlite:///{tmp_path}/store.sqlite3" if store == "sqlite" else str(request.getfixturevalue("postgres_url"))
    app = create_app(Settings(store_url=url))
    gamma = _first("gamma_deviance", weighted=False)  # raw scores of the gamma model: gamma_deviance and gamma
    regression = _first("rmse", weighted=False)
    classes = _first("multi_logloss", weighted=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://loss-service") as api:
            margin = {"margin": True}
            configs = {
                "gamma": [{"loss": "gamma_deviance", "options": margin}, {"loss": "gamma", "options": margin}],
                "regression": [{"loss": "rmse"}, {"loss": "mse"}],
                "classes": [{"loss": "multi_logloss", "options": margin}, {"loss": "multi_error@2", "options": margin}],
            }
            results = {}
            for name, losses in configs.items():
                case = {"gamma": gamma, "regression": regression, "classes": classes}[name]
                response = await api.put(f"/v1/models/{name}", json={"convention": "lightgbm", "losses": losses})
                assert response.status_code == 200, response.text
                ids = list(range(len(case["labels"])))
                predictions = (
                    case["predictions"]
                    if name != "regression"
                    else _first("rmse", weighted=False, margin=False)["predictions"]
                )
                logged = await api.post(f"/v1/models/{name}/predictions", json={"ids": ids, "predictions": predictions})
                assert logged.status_code == 200, logged.text
                logged = await api.post(f"/v1/models/{name}/labels", json={"ids": ids, "labels": case["labels"]})
                assert logged.status_code == 200, logged.text
                results[name] = logged.json()["results"]
            deviance, nll = results["gamma"]
            assert (deviance["loss"], deviance["aggregate"]) == ("gamma_deviance", "sum")
            assert deviance["mean"] == pytest.approx(gamma["expected"], rel=TOLERANCE)
            assert nll["mean"] == pytest.approx(_first("gamma", weighted=False)["expected"], rel=TOLERANCE)
            rmse, mse = results["regression"]
            assert (rmse["aggregate"], rmse["mean"]) == (
                "root_mean",
                pytest.approx(regression["expected"], rel=TOLERANCE),
            )
            assert (mse["loss"], mse["mean"]) == (
                "l2",
                pytest.approx(_first("l2", weighted=False)["expected"], rel=TOLERANCE),
            )
            logloss, top2 = results["classes"]
            assert logloss["mean"] == pytest.approx(classes["expected"], rel=TOLERANCE)
            assert top2["loss"] == "multi_error@2"
            bad = await api.put("/v1/models/other", json={"convention": "lightgbm", "losses": [{"loss": "mlogloss"}]})
            assert bad.status_code == 422
            assert bad.json()["errors"][0]["loc"] == ["body", "losses", 0, "loss"]


@pytest.mark.anyio
async def test_the_convention_endpoint_lists_the_table(api: httpx.AsyncClient) -> None:
    response = await api.get("/v1/conventions/lightgbm")
    assert response.status_code == 200
    listed = {m["metric"]: m for m in response.json()["metrics"]}
    assert set(listed) == {m.name for m in libraries.metrics("lightgbm")}
    assert (listed["gamma_deviance"]["aggregate"], listed["gamma_deviance"]["loss"]) == ("sum", "gamma_deviance")
    assert listed["multi_error"]["parameter"] == "multi_error_top_k"


# -- live: LightGBM trains the fixture's models and a few more -------------------------------------


def _live_extra() -> list[dict[str, Any]]:
    """Metrics under an objective that is not their own, and multiclassova: the link is the objective's."""
    import lightgbm as lgb

    rng = np.random.default_rng(34)
    x = rng.normal(size=(240, 3))
    cases = []
    binary = (x[:, 0] + rng.normal(0, 0.5, 240) > 0).astype(float)
    classes = np.digitize(x[:, 0] + rng.normal(0, 0.4, 240), [-0.7, 0, 0.7]).astype(float)
    counts = rng.poisson(np.exp(0.5 * x[:, 1])).astype(float)
    setups = [
        ({"objective": "binary", "sigmoid": 1.7}, binary, ["l2", "l1", "binary_logloss"]),
        ({"objective": "multiclassova", "num_class": 4, "sigmoid": 0.8}, classes, ["multi_logloss", "multi_error"]),
        ({"objective": "poisson"}, counts, ["l2", "tweedie", "mape"]),
    ]
    for params, y, metrics in setups:
        train, valid = slice(0, 200), slice(200, 240)
        w = rng.uniform(0.1, 3.0, 40)
        record: dict[str, Any] = {}
        booster = lgb.train(
            {"verbose": -1, "num_threads": 1, "deterministic": True, "seed": 1, "metric": metrics, **params},
            lgb.Dataset(x[train], y[train]),
            num_boost_round=8,
            valid_sets=[lgb.Dataset(x[valid], y[valid]), lgb.Dataset(x[valid], y[valid], weight=w)],
            valid_names=["plain", "weighted"],
            callbacks=[lgb.record_evaluation(record)],
        )
        for metric in metrics:
            for name, weights in (("plain", None), ("weighted", w)):
                for margin in (False, True):
                    cases.append(
                        {
                            "metric": metric,
                            "options": params,
                            "margin": margin,
                            "predictions": booster.predict(x[valid], raw_score=margin).tolist(),
                            "labels": y[valid].tolist(),
                            "sample_weight": None if weights is None else weights.tolist(),
                            "expected": record[name][metric][-1],
                        }
                    )
    return cases


def test_live_models_match_lightgbm() -> None:
    pytest.importorskip("lightgbm", reason="live LightGBM comparisons need lightgbm")
    from tests.reference import generate_lightgbm_fixtures

    live = generate_lightgbm_fixtures.build()
    assert len(live) == len(CASES)
    extra = _live_extra()
    assert {c["metric"] for c in live} == {m.name for m in libraries.metrics("lightgbm")}
    disagreeing = [_case_id(c) for c in [*live, *extra] if not _agrees(c)]
    assert not disagreeing


@pytest.mark.anyio
async def test_oip_metadata_names_the_catalogue_loss_and_infer_the_metric(api: httpx.AsyncClient) -> None:
    """`mse` is a catalogue alias and LightGBM's alias of l2: the model is the catalogue's, and an
    inference request under convention lightgbm computes LightGBM's l2."""
    assert (await api.get("/v2/models/mse")).json()["name"] == "mean_squared_error"
    assert (await api.get("/v2/models/gamma_deviance")).json()["name"] == "gamma_deviance"
    case = _first("l2", margin=False)
    n = len(case["labels"])
    oip = {
        "inputs": [
            {"name": "predictions", "shape": [n], "datatype": "FP64", "data": case["predictions"]},
            {"name": "labels", "shape": [n], "datatype": "FP64", "data": case["labels"]},
            {"name": "sample_weight", "shape": [n], "datatype": "FP64", "data": case["sample_weight"]},
        ],
        "parameters": {"convention": "lightgbm"},
    }
    response = await api.post("/v2/models/mse/infer", json=oip)
    assert response.status_code == 200, response.text
    mean = next(o for o in response.json()["outputs"] if o["name"] == "mean")
    assert mean["data"][0] == pytest.approx(case["expected"], rel=TOLERANCE)
