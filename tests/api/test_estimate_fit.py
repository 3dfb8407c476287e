"""The calibration fit of `estimate` (usecases/estimate_fit.py), through the HTTP API on SQLite and
PostgreSQL with the clock the test sets.

Each fit is checked against the engine's fit (temperature) or scikit-learn's IsotonicRegression
(isotonic) on the window the test picks itself from what it logged: the `window` pairs most
recent by prediction time among those joined. The prediction times are a permutation of the ids,
so neither the ids' nor the arrivals' order gives the same window.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from service.engine.recalibration import Isotonic, fit_temperature, recalibration_from_dict
from service.store import StoreFailureError
from tests.api.test_history import T0, Client, served
from tests.api.test_inference_events import api, configure, logger_event, send, v2_request, v2_response

__all__ = ["api", "served"]


def put(client: Client, model: str, config: dict[str, Any]) -> None:
    client.ok("PUT", f"/v1/models/{model}", json={"keep_pairs": True, **config})


def log_predictions(client: Client, model: str, predictions: Any, times: Any) -> None:
    ids = [f"p{i}" for i in range(len(times))]
    body = {"ids": ids, "predictions": np.asarray(predictions).tolist(), "timestamps": np.asarray(times).tolist()}
    client.ok("POST", f"/v1/models/{model}/predictions", json=body)


def log_labels(client: Client, model: str, chosen: Any, labels: Any, weights: Any) -> Any:
    client.clock.now += 60
    body = {
        "ids": [f"p{i}" for i in chosen],
        "labels": np.asarray(labels)[chosen].tolist(),
        "sample_weight": np.asarray(weights)[chosen].tolist(),
    }
    return client.ok("POST", f"/v1/models/{model}/labels", json=body)


def fit_of(client: Client, model: str) -> dict[str, Any] | None:
    fit: dict[str, Any] | None = client.ok("GET", f"/v1/models/{model}")["estimate_fit"]
    return fit


def latest(times: Any, joined: Any, n: int) -> Any:
    """The positions of the `n` pairs made last among those `joined` (the test's own window)."""
    joined = np.asarray(joined)
    return joined[np.argsort(-np.asarray(times)[joined], kind="stable")[:n]]


def miscalibrated_logits(n: int, rng: np.random.Generator, classes: int = 3) -> tuple[Any, Any, Any, Any]:
    """(logits, class labels, weights, times): labels drawn from softmax(logits / 3), times a
    permutation of the ids."""
    logits = rng.normal(size=(n, classes)) * 3
    q = np.exp(logits / 3) / np.exp(logits / 3).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(classes, p=row) for row in q])
    return logits, labels, rng.uniform(0.2, 3.0, n), T0 + rng.permutation(n) * 60.0


TEMPERATURE = {
    "losses": [{"loss": "scce", "options": {"from_logits": True}}],
    "convention": "torch",
    "estimate": {"calibration": "temperature", "window": 50},
}


def test_the_temperature_is_fitted_at_the_threshold_and_again_after_a_tenth_of_the_window(served: Client) -> None:
    rng = np.random.default_rng(31)
    logits, labels, weights, times = miscalibrated_logits(70, rng)
    put(served, "t", TEMPERATURE)
    log_predictions(served, "t", logits, times)

    def expected(window: Any) -> float:
        return fit_temperature(
            logits[window], labels[window], from_logits=True, convention="torch", sample_weight=weights[window]
        ).temperature

    log_labels(served, "t", range(49), labels, weights)
    assert fit_of(served, "t") is None  # 49 < min(window, 100)
    log_labels(served, "t", [49], labels, weights)
    first = fit_of(served, "t")
    assert first is not None
    window = latest(times, range(50), 50)
    assert first["calibration"] == "temperature"
    assert first["error"] is None
    assert first["pairs"] == 50
    assert first["joined"] == 50
    assert first["fitted_at"] == served.clock.now
    assert first["window"] == {"from": times[window].min(), "to": times[window].max()}
    assert first["parameters"]["temperature"] == pytest.approx(expected(window), rel=1e-12, abs=0)
    assert 2 < first["parameters"]["temperature"] < 4.5  # the labels' own temperature, 3

    log_labels(served, "t", range(50, 54), labels, weights)
    assert fit_of(served, "t") == first  # 4 < max(1, 50 // 10) pairs turned over
    log_labels(served, "t", [54], labels, weights)  # 5 pairs: a refit
    second = fit_of(served, "t")
    assert second is not None
    assert second["joined"] == 55
    assert second["fitted_at"] == served.clock.now
    window = latest(times, range(55), 50)
    assert second["pairs"] == 50
    assert second["window"] == {"from": times[window].min(), "to": times[window].max()}
    got = second["parameters"]["temperature"]
    assert got == pytest.approx(expected(window), rel=1e-12, abs=0)
    # The window is honoured: neither all the joined pairs nor the last ones logged fit the same.
    for other in (np.arange(55), np.arange(5, 55)):
        assert abs(expected(other) - got) > 1e-6 * got

    # A new configuration is fitted at the next log, before the window turns over.
    put(served, "t", {**TEMPERATURE, "estimate": {"calibration": "temperature", "window": 20}})
    assert fit_of(served, "t") == second
    log_labels(served, "t", [55], labels, weights)  # 1 < max(1, 20 // 10) pairs turned over
    third = fit_of(served, "t")
    assert third is not None
    assert third["pairs"] == 20
    assert third["parameters"]["temperature"] == pytest.approx(expected(latest(times, range(56), 20)), rel=1e-12)


@pytest.mark.parametrize("from_logits", [False, True])
def test_isotonic_is_scikit_learns_on_the_most_recent_window(served: Client, from_logits: bool) -> None:
    """From logits, the fit is of the probabilities they stand for (a plain 1 / (1 + e^-z) here)."""
    rng = np.random.default_rng(7)
    n = 130
    p = rng.uniform(0.01, 0.99, n)
    labels = (rng.uniform(size=n) < p**2).astype(float)
    weights, times = rng.uniform(0.2, 3.0, n), T0 + rng.permutation(n) * 60.0
    config = {
        "losses": [{"loss": "binary_crossentropy", "options": {"from_logits": from_logits}}],
        "convention": "keras",
        "estimate": {"calibration": "isotonic", "window": 100},
    }
    put(served, "iso", config)
    z = np.log(p) - np.log1p(-p)
    log_predictions(served, "iso", z if from_logits else p, times)
    if from_logits:
        p = 1 / (1 + np.exp(-z))
    log_labels(served, "iso", range(n), labels, weights)
    fit = fit_of(served, "iso")
    assert fit is not None
    assert fit["error"] is None
    assert fit["pairs"] == 100
    window = latest(times, range(n), 100)
    isotonic = recalibration_from_dict(fit["parameters"])
    assert isinstance(isotonic, Isotonic)
    reference = IsotonicRegression(out_of_bounds="clip").fit(p[window], labels[window], sample_weight=weights[window])
    grid = np.r_[p, np.linspace(0, 1, 101)]
    assert np.abs(isotonic.apply(grid) - reference.predict(grid)).max() <= (1e-9 if from_logits else 1e-12)
    everything = IsotonicRegression(out_of_bounds="clip").fit(p, labels, sample_weight=weights)
    assert np.abs(isotonic.apply(grid) - everything.predict(grid)).max() > 1e-3  # the older 30 pairs are left out


@pytest.mark.parametrize(
    ("convention", "options", "ignored", "classes"),
    [
        ("torch", {"from_logits": True}, -100, 3),
        ("keras", {"from_logits": True, "ignore_class": 7}, 7, 3),
        # two classes, the fewest a class index is read for; torch's own index instead of -100
        ("torch", {"from_logits": True, "ignore_index": 5}, 5, 2),
        ("keras", {"from_logits": True, "ignore_class": 7}, 7, 2),
    ],
)
def test_the_labels_a_loss_ignores_are_left_out_of_the_fit(
    served: Client, convention: str, options: dict[str, Any], ignored: int, classes: int
) -> None:
    rng = np.random.default_rng(13)
    logits, labels, weights, times = miscalibrated_logits(30, rng, classes)
    labels[::4] = ignored
    config = {
        "losses": [{"loss": "scce", "options": options}],
        "convention": convention,
        "estimate": {"calibration": "temperature", "window": 20},
    }
    put(served, "ignoring", config)
    log_predictions(served, "ignoring", logits, times)
    # Keras's class indices logged as one column, (n, 1)
    log_labels(served, "ignoring", range(30), labels[:, None] if convention == "keras" else labels, weights)
    fit = fit_of(served, "ignoring")
    assert fit is not None
    assert fit["error"] is None
    window = latest(times, range(30), 20)
    window = window[labels[window] != ignored]
    assert fit["pairs"] == len(window) < 20
    reference = fit_temperature(
        logits[window], labels[window], from_logits=True, convention=convention, sample_weight=weights[window]
    )
    assert fit["parameters"]["temperature"] == pytest.approx(reference.temperature, rel=1e-12, abs=0)


@pytest.mark.parametrize(
    ("calibration", "reason"),
    [("isotonic", "isotonic recalibration takes one binary column"), ("temperature", "one-hot row")],
)
def test_a_fit_the_engine_refuses_is_kept_with_its_reason(served: Client, calibration: str, reason: str) -> None:
    rng = np.random.default_rng(3)
    n = 12
    p = rng.dirichlet(np.ones(3), n)
    # isotonic: one-hot labels of three classes; temperature: soft labels, neither 0/1 nor one-hot
    labels = np.eye(3)[rng.integers(0, 3, n)] if calibration == "isotonic" else rng.dirichlet(np.ones(3), n)
    config = {
        "losses": [{"loss": "categorical_crossentropy"}],
        "convention": "keras",
        "estimate": {"calibration": calibration, "window": 10},
    }
    put(served, "refused", config)
    log_predictions(served, "refused", p, T0 + np.arange(n) * 60.0)
    log_labels(served, "refused", range(10), labels, np.ones(n))  # 200 (log_labels checks it)
    fit = fit_of(served, "refused")
    assert fit is not None
    assert fit["parameters"] is None
    assert fit["pairs"] == 10
    assert reason in fit["error"], fit["error"]
    log_labels(served, "refused", [10, 11], labels, np.ones(n))  # one pair turns a window of 10 over
    again = fit_of(served, "refused")
    assert again is not None
    assert again["joined"] == 12
    assert again["parameters"] is None
    assert again["error"] == fit["error"]
    assert again["fitted_at"] == served.clock.now > fit["fitted_at"]


def test_a_follower_of_labels_from_is_fitted_on_its_own_pairs(served: Client) -> None:
    rng = np.random.default_rng(11)
    logits, labels, weights, times = miscalibrated_logits(20, rng)
    put(served, "source", {"losses": [{"loss": "scce", "options": {"from_logits": True}}], "convention": "torch"})
    window_of_10 = {"calibration": "temperature", "window": 10}
    put(served, "follower", {**TEMPERATURE, "labels_from": "source", "estimate": window_of_10})
    theirs = logits[::-1].copy()
    log_predictions(served, "source", logits, times)
    log_predictions(served, "follower", theirs, times)
    log_labels(served, "source", range(20), labels, weights)
    assert fit_of(served, "source") is None  # no estimate
    fit = fit_of(served, "follower")
    assert fit is not None
    assert fit["pairs"] == 10
    window = latest(times, range(20), 10)
    got = fit["parameters"]["temperature"]
    reference = fit_temperature(
        theirs[window], labels[window], from_logits=True, convention="torch", sample_weight=weights[window]
    )
    assert got == pytest.approx(reference.temperature, rel=1e-12, abs=0)


def test_a_store_failure_while_fitting_never_fails_the_log(
    served: Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(5)
    logits, labels, weights, times = miscalibrated_logits(12, rng)
    put(served, "failing", {**TEMPERATURE, "estimate": {"calibration": "temperature", "window": 10}})
    log_predictions(served, "failing", logits, times)

    def failing(*_: Any) -> None:
        raise StoreFailureError("the test's database went away")

    monkeypatch.setattr(served.store, "recent_pairs", failing)
    with caplog.at_level(logging.WARNING, "service.api"):
        answer = log_labels(served, "failing", range(10), labels, weights)
    assert answer["joined"] == 10
    assert "estimate fit of failing not kept: the test's database went away" in caplog.text
    assert fit_of(served, "failing") is None
    monkeypatch.undo()
    log_labels(served, "failing", [10], labels, weights)  # the next log fits
    fit = fit_of(served, "failing")
    assert fit is not None
    assert fit["pairs"] == 10
    assert fit["joined"] == 11


@pytest.mark.anyio
async def test_an_inference_event_that_joins_pairs_fits_them(api: httpx.AsyncClient) -> None:
    """KServe's logger: the event whose second half completes the predictions joins the waiting
    labels, and the fit follows (all rows share the event's time: the window's ties go by id)."""
    config = {**TEMPERATURE, "keep_pairs": True, "estimate": {"calibration": "temperature", "window": 10}}
    await configure(api, "churn", {"prediction": "logits", "id": "user"}, **config)
    rng = np.random.default_rng(17)
    logits, labels, weights, _ = miscalibrated_logits(12, rng)
    users = [f"u{i}" for i in range(12)]
    body = {"ids": users, "labels": labels.tolist(), "sample_weight": weights.tolist()}
    assert (await api.post("/v1/models/churn/labels", json=body)).status_code == 200
    await send(api, "churn", logger_event("request", "e", v2_request(users)))
    logged = await send(api, "churn", logger_event("response", "e", v2_response(logits)))
    assert logged["log"]["joined"] == 12
    fit = (await api.get("/v1/models/churn")).json()["estimate_fit"]
    assert fit is not None
    assert fit["pairs"] == 10
    window = [users.index(user) for user in sorted(users, reverse=True)[:10]]
    reference = fit_temperature(
        logits[window], labels[window], from_logits=True, convention="torch", sample_weight=weights[window]
    )
    assert fit["parameters"]["temperature"] == pytest.approx(reference.temperature, rel=1e-12, abs=0)


def test_a_window_whose_every_label_is_ignored_is_kept_as_an_empty_one(served: Client) -> None:
    """The ten pairs made last are all ignored; the one scored was made before them."""
    logits, _, weights, _ = miscalibrated_logits(11, np.random.default_rng(19))
    put(served, "ignored", {**TEMPERATURE, "estimate": {"calibration": "temperature", "window": 10}})
    log_predictions(served, "ignored", logits, T0 + np.arange(11) * 60.0)
    log_labels(served, "ignored", range(11), np.r_[1, np.full(10, -100)], weights)
    fit = fit_of(served, "ignored")
    assert fit is not None
    assert (fit["parameters"], fit["pairs"], fit["joined"]) == (None, 0, 11)
    assert (
        fit["error"] == "labels: every label of the window's 10 pairs is the class ignored (-100): the window is empty"
    )


def test_refit_answers_the_fit_it_kept_and_none_where_it_kept_none(
    served: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`refit` as a log's aftermath calls it, with the model read before a concurrent change: none
    where the model is gone (never there, or removed before its pairs are read), was fitted
    meanwhile at as many joined pairs (not due any more), or at more (the slower fit is not kept)."""
    from service.usecases import estimate_fit

    store = served.store
    assert estimate_fit.refit(store, "nope", served.clock.now) is None
    logits, labels, weights, times = miscalibrated_logits(10, np.random.default_rng(23))
    put(served, "r", {**TEMPERATURE, "estimate": {"calibration": "temperature", "window": 10}})
    log_predictions(served, "r", logits, times)
    with monkeypatch.context() as held:  # joined, the log's own fit held off
        held.setattr(estimate_fit, "after_log", lambda *_: None)
        log_labels(served, "r", range(10), labels, weights)
    assert fit_of(served, "r") is None
    due = store.model("r")
    assert due is not None

    kept = estimate_fit.refit(store, "r", served.clock.now)
    assert kept is not None
    assert kept["joined"] == 10
    assert kept == fit_of(served, "r")

    read = store.recent_pairs
    served.clock.now += 1
    with monkeypatch.context() as stale:  # the model read before that fit was kept
        stale.setattr(store, "model", lambda _: due)
        assert estimate_fit.refit(store, "r", served.clock.now) is None  # its pairs' model is fitted
    assert fit_of(served, "r") == kept

    later = {**kept, "joined": 11, "fitted_at": 0.0}
    save_fit = store.save_fit

    def overtaken(name: str, fit: dict[str, Any]) -> bool:
        assert save_fit(name, later)  # a fit read at more joined pairs, kept first
        return save_fit(name, fit)

    with monkeypatch.context() as racing:  # the pairs read before that fit was kept too
        racing.setattr(store, "model", lambda _: due)
        racing.setattr(store, "recent_pairs", lambda name, n: replace(read(name, n), model=due))
        racing.setattr(store, "save_fit", overtaken)
        assert estimate_fit.refit(store, "r", served.clock.now) is None
    assert fit_of(served, "r") == later

    assert served.request("DELETE", "/v1/models/r").status_code == 204
    monkeypatch.setattr(store, "model", lambda _: due)
    assert estimate_fit.refit(store, "r", served.clock.now) is None  # gone once its pairs are read


@pytest.mark.parametrize("loss", ["sigmoid_focal", "nll"])
def test_a_loss_that_reads_logits_whatever_its_options_is_fitted_on_its_logits(served: Client, loss: str) -> None:
    """sigmoid_focal takes logits and nll log-probabilities (logits to a softmax), with no
    from_logits option to say so: the temperature is fitted on them as such, not refused as
    probabilities outside [0, 1]."""
    rng = np.random.default_rng(43)
    logits, labels, weights, times = miscalibrated_logits(50, rng, classes=2 if loss == "sigmoid_focal" else 3)
    if loss == "sigmoid_focal":  # one binary column: the logit of class 1 against class 0
        predictions, targets = (logits[:, 1] - logits[:, 0])[:, None], labels[:, None].astype(float)
    else:
        predictions, targets = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True)), labels
    estimate = {"calibration": "temperature", "window": 50}
    put(served, "m", {"losses": [{"loss": loss}], "convention": "torch", "estimate": estimate})
    log_predictions(served, "m", predictions, times)
    log_labels(served, "m", range(50), targets, weights)
    fit = fit_of(served, "m")
    assert fit is not None
    assert fit["error"] is None
    reference = fit_temperature(predictions, targets, from_logits=True, convention="torch", sample_weight=weights)
    assert fit["parameters"]["temperature"] == pytest.approx(reference.temperature, rel=1e-12, abs=0)
    assert 1.5 < fit["parameters"]["temperature"] < 6  # the labels' own temperature, 3
