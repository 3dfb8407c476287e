"""The xgboost convention against XGBoost's own `evals_result()`.

The committed fixture (tests/fixtures/xgboost_reference.json, from
tests/reference/generate_xgboost_fixtures.py) runs everywhere; the live comparison trains the same
small seeded models where xgboost is installed (CI installs it). Every metric, unweighted and
weighted, on `predict`'s output and on raw margins.

Tolerances: XGBoost computes each row in float32 and sums in double. In float64 the engine's rows
differ from XGBoost's by float32 rounding: measured at most 4.7e-8 relative on the mean, allowed
1e-7. With dtype float32 (rows in float32, sums in float64, as XGBoost) the metrics built from
+ - * / abs and sqrt agree to 1e-12 (measured: 0); those with log, exp or lgamma differ by NumPy's
float32 log/exp against the C library's logf/expf, measured at most 4.7e-8, allowed 1e-7.
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
from service.values.results import Totals, combine
from tests.boosted import assert_refused, first_case

FIXTURE = json.loads((Path(__file__).parent.parent / "fixtures" / "xgboost_reference.json").read_text())
CASES: list[dict[str, Any]] = FIXTURE["cases"]
ARITHMETIC = {"error", "error@0.7", "merror", "rmse", "mae", "mape", "mphe", "quantile"}
TOLERANCE = 1e-7


def _case_id(case: dict[str, Any]) -> str:
    alphas = case["options"].get("quantile_alpha")
    return "-".join(
        [
            case["metric"] + (f"{len(alphas)}" if isinstance(alphas, list) else ""),
            "weighted" if case["sample_weight"] is not None else "unweighted",
            "margin" if case["margin"] else "predict",
        ]
    )


def _check(case: dict[str, Any]) -> None:
    arrays = {
        "predictions": np.asarray(case["predictions"], dtype=np.float32),  # predict() returns float32
        "labels": case["labels"],
        "sample_weight": case["sample_weight"],
    }
    for dtype in ("float64", "float32"):
        reduced = compute(case["metric"], **arrays, options=case["options"], convention="xgboost", dtype=dtype)
        tolerance = 1e-12 if dtype == "float32" and case["metric"] in ARITHMETIC else TOLERANCE
        assert reduced.mean == pytest.approx(case["expected"], rel=tolerance, abs=1e-12), (dtype, case["expected"])
        expected_aggregate = "root_mean" if case["metric"] in ("rmse", "rmsle") else "mean"
        assert reduced.aggregate == expected_aggregate
    assert loss_name(case["metric"], "xgboost", case["options"]) == case["metric"]  # evals_result()'s key


def test_the_fixture_covers_every_metric_weighted_and_unweighted_on_probabilities_and_margins() -> None:
    assert FIXTURE["library"] == "xgboost"
    covered = {(c["metric"].partition("@")[0], c["sample_weight"] is not None, c["margin"]) for c in CASES}
    names = {m.name for m in libraries.metrics("xgboost")}
    assert covered == {(n, w, m) for n in names for w in (False, True) for m in (False, True)}
    assert len({len(c["predictions"][0]) for c in CASES if c["metric"] == "mlogloss"} - {1}) == 1  # several classes


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_the_engine_reproduces_the_recorded_evaluation(case: dict[str, Any]) -> None:
    _check(case)


def test_live_models_match_xgboost() -> None:
    pytest.importorskip("xgboost", reason="live XGBoost comparisons need xgboost (.ci/run installs it)")
    from tests.reference.xgboost_cases import cases

    live = cases()
    assert len(live) == len(CASES)
    for case in live:
        _check(case)


# -- the mean a weighted, rooted, clamped metric takes: mutations these catch ---------------------


def test_rmse_is_the_root_of_the_weighted_mean_and_chunks_recombine_before_the_root() -> None:
    rng = np.random.default_rng(5)
    p, y, w = rng.normal(size=50), rng.normal(size=50), rng.uniform(0.1, 3.0, 50)
    whole = compute("rmse", p, y, sample_weight=w, convention="xgboost")
    assert whole.mean == pytest.approx(math.sqrt(np.sum(w * (y - p) ** 2) / np.sum(w)), rel=1e-14)
    assert whole.sum == pytest.approx(np.sum(w * (y - p) ** 2), rel=1e-14)
    assert whole.denominator == pytest.approx(np.sum(w), rel=1e-14)
    np.testing.assert_allclose(whole.per_sample, w * (y - p) ** 2, rtol=1e-15)
    parts = [
        compute("rmse", p[a:b], y[a:b], sample_weight=w[a:b], convention="xgboost", chunk=True)
        for a, b in ((0, 20), (20, 50))
    ]
    assert combine(parts).mean == pytest.approx(whole.mean, rel=1e-14)  # the client
    totals = Totals()
    for r in parts:
        totals.add(r)
    assert totals.mean() == pytest.approx(whole.mean, rel=1e-14)  # datasets and the CLI


def test_logloss_clamps_at_xgboosts_eps_not_keras() -> None:
    # XGBoost: -log(max(1 - p, 1e-16f)) for p = 1, y = 0; Keras's clip would give -log(1e-7).
    reduced = compute("logloss", [1.0, 0.0], [0.0, 1.0], convention="xgboost")
    assert reduced.mean == pytest.approx(-math.log(float(np.float32(1e-16))), rel=1e-12)


def test_weights_divide_by_their_sum_not_the_count() -> None:
    reduced = compute("mae", [0.0, 0.0], [1.0, 3.0], sample_weight=[3.0, 1.0], convention="xgboost")
    assert reduced.mean == pytest.approx((3 * 1 + 1 * 3) / 4)
    assert reduced.denominator == 4.0


def test_a_float32_metric_says_so_and_weights_summing_to_zero_are_refused_in_words() -> None:
    reduced = compute("mae", [0.0, 0.0], [1.0, 3.0], sample_weight=[3.0, 1.0], dtype="float32", convention="xgboost")
    assert (reduced.dtype, reduced.per_sample.dtype) == ("float32", np.float32)
    assert reduced.answer()["dtype"] == "float32"
    with pytest.raises(LossInputError) as caught:
        compute("mae", [0.0, 0.0], [1.0, 3.0], sample_weight=[0.0, 0.0], convention="xgboost")
    assert (caught.value.field, caught.value.reason) == ("sample_weight", "the weights sum to 0; the mean would be 0/0")


def test_error_threshold_from_the_name_and_from_the_option() -> None:
    p, y = [0.6, 0.75, 0.2], [1.0, 1.0, 0.0]
    assert compute("error", p, y, convention="xgboost").mean == 0.0
    assert compute("error@0.7", p, y, convention="xgboost").mean == pytest.approx(1 / 3)
    assert compute("error", p, y, convention="xgboost", options={"threshold": 0.7}).mean == pytest.approx(1 / 3)
    assert loss_name("error", "xgboost", {"threshold": 0.7}) == "error@0.7"
    assert loss_name("error@0.5", "xgboost") == "error"


# -- refusals: each names its field, index and reason ---------------------------------------------


@pytest.mark.parametrize(
    ("convention", "loss", "predictions", "labels", "options", "field", "index", "reason"),
    [
        ("xgboost", "mse", [0.5], [1.0], {}, "loss", (), "'mse' is a catalogue loss"),
        ("xgboost", "binary_logloss", [0.5], [1.0], {}, "loss", (), "convention 'xgboost' accepts: logloss"),
        ("lightgbm", "logloss", [0.5], [1.0], {}, "loss", (), "'logloss' is XGBoost's metric"),
        ("xgboost", "error@high", [0.5], [1.0], {}, "loss", (), "the part after @ must be a number"),
        ("xgboost", "error@1e999", [0.5], [1.0], {}, "loss", (), "the part after @ must be a number"),
        ("xgboost", "logloss@3", [0.5], [1.0], {}, "loss", (), "takes no @parameter"),
        ("xgboost", "tweedie-nloglik", [0.5], [1.0], {}, "loss", (), "tweedie-nloglik@1.5"),
        ("xgboost", "tweedie-nloglik@1", [0.5], [1.0], {}, "options.tweedie_variance_power", (), "> 1"),
        ("xgboost", "error@0.3", [0.5], [1.0], {"threshold": 0.2}, "options.threshold", (), "give it once"),
        ("xgboost", "logloss", [0.5], [1.0], {"alpha": 0.2}, "options.alpha", (), "its options: margin"),
        ("xgboost", "mphe", [0.5], [1.0], {"huber_slope": "2"}, "options.huber_slope", (), "must be float"),
        ("xgboost", "logloss", [0.5, 0.2], [1.0, 0.5], {}, "labels", (1,), "binary labels must be one of"),
        ("xgboost", "logloss", [0.5, 1.2], [1.0, 0.0], {}, "predictions", (1,), "margin is false"),
        ("xgboost", "mlogloss", [[0.5, 0.5]], [2], {}, "labels", (0,), "outside [0, 1]"),
        ("xgboost", "poisson-nloglik", [1.0, 2.0], [1.0, -1.0], {}, "labels", (1,), "Poisson counts must be >= 0"),
        ("xgboost", "gamma-nloglik", [1.0, 2.0], [1.0, 0.0], {}, "labels", (1,), "gamma labels must be > 0"),
        ("xgboost", "gamma-deviance", [1.0, -2.0], [1.0, 1.0], {}, "predictions", (1,), "must be >= 0"),
        ("xgboost", "tweedie-nloglik@1.5", [1.0, 0.0], [1.0, 1.0], {}, "predictions", (1,), "must be > 0"),
        ("xgboost", "mape", [1.0, 2.0], [1.0, 0.0], {}, "labels", (1,), "must not be 0"),
        ("xgboost", "rmsle", [1.0, -1.0], [1.0, 1.0], {}, "predictions", (1,), "must be > -1"),
        (
            "xgboost",
            "quantile",
            [[1.0, 2.0]],
            [1.0],
            {"quantile_alpha": [0.1, 0.5, 0.9]},
            "predictions",
            (),
            "one column per",
        ),
        ("xgboost", "rmse", [1.0], [1.0], {}, "sample_weight", (), "sum to 0"),
    ],
)
def test_refusals_name_field_index_and_reason(
    convention: Any, loss: str, predictions: Any, labels: Any, options: Any, field: str, index: Any, reason: str
) -> None:
    assert_refused(convention, loss, predictions, labels, options, field, index, reason)


def test_margins_that_overflow_are_refused_not_answered_inf() -> None:
    with pytest.raises(LossInputError) as caught:
        compute("poisson-nloglik", [1.0, 800.0], [1.0, 1.0], options={"margin": True}, convention="xgboost")
    assert caught.value.field == "predictions"
    assert caught.value.index == (1,)


# -- the HTTP API, OIP and stored model configurations --------------------------------------------


def _first(name: str, *, weighted: bool = True, margin: bool = False) -> dict[str, Any]:
    return first_case(CASES, name, weighted=weighted, margin=margin)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "metric", ["logloss", "mlogloss", "error@0.7", "merror", "rmse", "mphe", "tweedie-nloglik@1.3"]
)
async def test_v1_loss_answers_the_recorded_evaluation(api: httpx.AsyncClient, metric: str) -> None:
    case = _first(metric, margin=metric in ("mlogloss", "tweedie-nloglik@1.3"))
    body = {
        "loss": case["metric"],
        "convention": "xgboost",
        "predictions": case["predictions"],
        "labels": case["labels"],
        "sample_weight": case["sample_weight"],
        "options": case["options"],
    }
    response = await api.post("/v1/loss", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["loss"] == case["metric"]
    assert answer["mean"] == pytest.approx(case["expected"], rel=TOLERANCE)
    assert answer["aggregate"] == ("root_mean" if metric == "rmse" else "mean")
    assert answer["convention"] == "xgboost"


@pytest.mark.anyio
async def test_v1_evaluate_and_oip_take_library_metrics(api: httpx.AsyncClient) -> None:
    case = _first("quantile")  # quantile_alpha 0.3: one column
    arrays = {"predictions": case["predictions"], "labels": case["labels"], "sample_weight": case["sample_weight"]}
    response = await api.post(
        "/v1/evaluate",
        json={
            **arrays,
            "convention": "xgboost",
            "losses": [{"loss": "quantile", "options": {"quantile_alpha": 0.3}}, {"loss": "mae"}, {"loss": "rmse"}],
        },
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results[0]["mean"] == pytest.approx(case["expected"], rel=TOLERANCE)
    assert [r["aggregate"] for r in results] == ["mean", "mean", "root_mean"]
    refused = await api.post(
        "/v1/evaluate", json={**arrays, "convention": "xgboost", "losses": [{"loss": "mae"}, {"loss": "huber"}]}
    )
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["loc"] == ["body", "losses", 1, "loss"]
    assert "is no XGBoost metric" in refused.json()["errors"][0]["msg"]

    rmse = _first("rmse", weighted=False)
    oip = {
        "inputs": [
            {
                "name": "predictions",
                "shape": [len(rmse["predictions"])],
                "datatype": "FP64",
                "data": rmse["predictions"],
            },
            {"name": "labels", "shape": [len(rmse["labels"])], "datatype": "FP64", "data": rmse["labels"]},
        ],
        "parameters": {"convention": "xgboost"},
    }
    response = await api.post("/v2/models/rmse/infer", json=oip)
    assert response.status_code == 200, response.text
    assert response.json()["parameters"]["aggregate"] == "root_mean"
    mean = next(o for o in response.json()["outputs"] if o["name"] == "mean")
    assert mean["data"][0] == pytest.approx(rmse["expected"], rel=TOLERANCE)


@pytest.mark.anyio
async def test_a_catalogue_name_under_xgboost_and_a_metric_under_keras_are_refused(api: httpx.AsyncClient) -> None:
    base = {"predictions": [0.5], "labels": [1.0]}
    keras = await api.post("/v1/loss", json={**base, "loss": "logloss"})
    assert keras.status_code == 422
    assert "'logloss' is XGBoost's metric: it takes convention 'xgboost'" in keras.json()["errors"][0]["msg"]
    xgb = await api.post("/v1/loss", json={**base, "loss": "binary_crossentropy", "convention": "xgboost"})
    assert xgb.status_code == 422
    assert xgb.json()["errors"][0] == {
        "loc": ["body", "loss"],
        "msg": "'binary_crossentropy' is no XGBoost metric ('binary_crossentropy' is a catalogue loss: it takes "
        f"convention keras or torch); convention 'xgboost' accepts: {libraries.accepted('xgboost')}",
    }
    wrong_option = await api.post(
        "/v1/loss", json={**base, "loss": "logloss", "convention": "xgboost", "options": {"from_logits": True}}
    )
    assert wrong_option.status_code == 422
    assert wrong_option.json()["errors"][0]["loc"] == ["body", "options", "from_logits"]


@pytest.mark.anyio
@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
async def test_a_stored_model_configuration_computes_library_metrics(
    request: pytest.FixtureRequest, tmp_path: Path, store: str
) -> None:
    url = f"sqlite:///{tmp_path}/store.sqlite3" if store == "sqlite" else str(request.getfixturevalue("postgres_url"))
    app = create_app(Settings(store_url=url))
    case = _first("rmse", weighted=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://loss-service") as api:
            config = {"convention": "xgboost", "losses": [{"loss": "rmse"}, {"loss": "mphe"}]}
            response = await api.put("/v1/models/boosted", json=config)
            assert response.status_code == 200, response.text
            assert response.json()["convention"] == "xgboost"
            assert response.json()["losses"] == [{"loss": "rmse", "options": {}}, {"loss": "mphe", "options": {}}]
            ids = list(range(len(case["labels"])))
            await api.post("/v1/models/boosted/predictions", json={"ids": ids, "predictions": case["predictions"]})
            logged = await api.post("/v1/models/boosted/labels", json={"ids": ids, "labels": case["labels"]})
            assert logged.status_code == 200, logged.text
            rmse, mphe = logged.json()["results"]
            assert (rmse["loss"], rmse["aggregate"]) == ("rmse", "root_mean")
            assert rmse["mean"] == pytest.approx(case["expected"], rel=TOLERANCE)
            assert (mphe["loss"], mphe["aggregate"]) == ("mphe", "mean")
            named = await api.put(
                "/v1/models/binary", json={"convention": "xgboost", "losses": [{"loss": "error@0.7"}]}
            )
            assert named.json()["losses"] == [{"loss": "error@0.7", "options": {}}]  # kept as written
            bad = await api.put("/v1/models/other", json={"convention": "xgboost", "losses": [{"loss": "mse"}]})
            assert bad.status_code == 422
            assert bad.json()["errors"][0]["loc"] == ["body", "losses", 0, "loss"]


def test_the_request_union_routes_on_loss_and_convention() -> None:
    adapter = loss_request_adapter()
    base = {"predictions": [0.5], "labels": [1.0]}
    assert type(adapter.validate_python({**base, "loss": "mae"})).__name__ == "MeanAbsoluteErrorRequest"
    assert (
        type(adapter.validate_python({**base, "loss": "mae", "convention": "xgboost"})).__name__ == "MaeXgboostRequest"
    )


@pytest.mark.anyio
async def test_the_convention_endpoint_lists_the_table(api: httpx.AsyncClient) -> None:
    response = await api.get("/v1/conventions/xgboost")
    assert response.status_code == 200
    listed = {m["metric"]: m for m in response.json()["metrics"]}
    assert set(listed) == {m.name for m in libraries.metrics("xgboost")}
    assert (listed["rmse"]["aggregate"], listed["rmse"]["loss"]) == ("root_mean", "mean_squared_error")
    assert listed["tweedie-nloglik"]["parameter"] == "tweedie_variance_power"
    entry = (await api.get("/v1/losses/binary_crossentropy")).json()
    assert {"convention": "xgboost", "metric": "logloss"}.items() <= entry["library_metrics"][0].items()
    assert (await api.get("/v1/conventions/pytorch")).status_code == 422


def test_the_cli_computes_a_library_metric_locally(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main

    case = _first("rmse")
    for name in ("predictions", "labels", "sample_weight"):
        np.save(tmp_path / f"{name}.npy", np.asarray(case[name], dtype=np.float32))
    arguments = ["compute", "--loss", "rmse", "--convention", "xgboost", "--json"]
    for name in ("predictions", "labels"):
        arguments += [f"--{name}", str(tmp_path / f"{name}.npy")]
    assert main([*arguments, "--sample-weight", str(tmp_path / "sample_weight.npy")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["loss"], printed["aggregate"]) == ("rmse", "root_mean")
    assert printed["mean"] == pytest.approx(case["expected"], rel=TOLERANCE)
    assert main([*arguments, "--option", "margin=maybe"]) != 0  # the engine checks a library option's type
