"""GET /v1/models/{model}/history?calibration=true, on SQLite and PostgreSQL.

Each bucket's calibration is checked against POST /v1/calibration over the bucket's own joined
pairs (one request per bucket, its predictions and labels as the test logged them): the history
reads the pairs' stored payloads back and hands them to the same engine, so the numbers agree to
the last bits (1e-12, the order of the sums aside)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.api.test_history import HOUR, T0, Client, joined_mask, log_cohort, served

__all__ = ["served"]

WINDOW = f"start={T0:.0f}&end={T0 + 4 * HOUR:.0f}&step=3600"


def close(got: Any, expected: Any, path: str = "") -> None:
    """The same JSON, floats within 1e-12 (absolute: every number here lies in [0, 1])."""
    if isinstance(expected, dict):
        assert isinstance(got, dict), (path, got)
        assert got.keys() == expected.keys(), (path, got, expected)
        for key in expected:
            close(got[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list), (path, got)
        assert len(got) == len(expected), (path, got, expected)
        for i, (a, b) in enumerate(zip(got, expected, strict=True)):
            close(a, b, f"{path}[{i}]")
    elif isinstance(expected, int):  # counts (and bools)
        assert type(got) is type(expected), (path, got, expected)
        assert got == expected, (path, got, expected)
    else:
        assert isinstance(got, float), (path, got)
        assert abs(got - expected) <= 1e-12, (path, got, expected)


def case(name: str, n: int, rng: np.random.Generator) -> tuple[dict[str, Any], Any, Any, dict[str, Any]]:
    """(config, predictions, labels, the POST /v1/calibration settings the history should apply)."""
    if name == "binary-probabilities-uniform":
        config = {"losses": [{"loss": "binary_crossentropy"}], "convention": "keras"}
        p = rng.uniform(0.01, 0.99, n)
        return config, p, (rng.uniform(size=n) < p).astype(float), {"from_logits": False, "bins": 15}
    if name == "three-classes-logits-quantile":
        config = {"losses": [{"loss": "scce", "options": {"from_logits": True}}], "convention": "torch"}
        logits = rng.normal(size=(n, 3)) * 2
        return config, logits, rng.integers(0, 3, n), {"from_logits": True, "bins": 5, "strategy": "quantile"}
    if name == "binary-column-logits-default-from-the-loss":
        config = {"losses": [{"loss": "bce", "options": {"from_logits": True}}, {"loss": "mse"}], "convention": "torch"}
        return config, rng.normal(size=(n, 1)) * 3, rng.integers(0, 2, (n, 1)).astype(float), {"from_logits": True}
    raise AssertionError(name)


def query_of(settings: dict[str, Any]) -> str:
    return "".join(f"&{key}={value}" for key, value in settings.items() if key != "from_logits")


def expected_calibration(
    client: Client, predictions: Any, labels: Any, pairs: np.ndarray[Any, Any], settings: dict[str, Any]
) -> dict[str, Any]:
    return dict(
        client.ok(
            "POST",
            "/v1/calibration",
            json={"predictions": predictions[pairs].tolist(), "labels": labels[pairs].tolist(), **settings},
        )
    )


CASES = ["binary-probabilities-uniform", "three-classes-logits-quantile", "binary-column-logits-default-from-the-loss"]


@pytest.mark.parametrize("name", CASES)
def test_each_buckets_calibration_is_what_v1_calibration_gives_for_its_joined_pairs(served: Client, name: str) -> None:
    n = 240
    config, predictions, labels, settings = case(name, n, np.random.default_rng(21))
    times = log_cohort(served, "m", n, {**config, "keep_pairs": True}, predictions, labels, np.ones(n))
    # a fourth hour with predictions and no label yet: its calibration is null
    served.ok("POST", "/v1/models/m/predictions", json={"ids": ["late"], "predictions": [predictions[0].tolist()],
                                                        "timestamps": [T0 + 3.5 * HOUR]})  # fmt: skip
    joined = joined_mask(served, "m", n)
    # start and step fit the hourly rollups: calibration reads the rows all the same
    answer = served.ok("GET", f"/v1/models/m/history?{WINDOW}&calibration=true{query_of(settings)}")
    assert [b["start"] for b in answer["buckets"]] == [T0 + h * HOUR for h in range(4)]
    for bucket in answer["buckets"][:3]:
        pairs = joined & (times >= bucket["start"]) & (times < bucket["start"] + HOUR)
        assert bucket["joined"] == int(pairs.sum()) > 20
        got = dict(bucket["calibration"])
        assert got.pop("pairs") == bucket["joined"]
        close(got, expected_calibration(served, predictions, labels, pairs, settings))
    late = answer["buckets"][3]
    assert (late["predictions"], late["joined"], late["calibration"]) == (1, 0, None)
    # without the flag, no calibration at all
    assert all("calibration" not in b for b in served.ok("GET", f"/v1/models/m/history?{WINDOW}")["buckets"])


def test_with_by_each_segment_entry_has_the_calibration_of_its_pairs(served: Client) -> None:
    n = 240
    config, predictions, labels, settings = case("three-classes-logits-quantile", n, np.random.default_rng(22))
    times = log_cohort(served, "m", n, {**config, "keep_pairs": True}, predictions, labels, np.ones(n))
    joined = joined_mask(served, "m", n)
    countries = np.array([["BR", "US", None][i % 3] for i in range(n)], dtype=object)
    answer = served.ok("GET", f"/v1/models/m/history?{WINDOW}&by=country&calibration=true{query_of(settings)}")
    assert len(answer["buckets"]) == 9
    for bucket in answer["buckets"]:
        here = (times >= bucket["start"]) & (times < bucket["start"] + HOUR) & (countries == bucket["segment"])
        pairs = here & joined
        got = dict(bucket["calibration"])
        assert got.pop("pairs") == int(pairs.sum()) == bucket["joined"]
        close(got, expected_calibration(served, predictions, labels, pairs, settings))


def test_a_scan_in_small_batches_gives_the_same_calibration(served: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.usecases import history

    n = 120
    config, predictions, labels, _ = case("binary-probabilities-uniform", n, np.random.default_rng(23))
    log_cohort(served, "m", n, {**config, "keep_pairs": True}, predictions, labels, np.ones(n))
    url = f"/v1/models/m/history?{WINDOW}&by=country&calibration=true&strategy=quantile&bins=4"
    whole = served.ok("GET", url)
    monkeypatch.setattr(history, "SCAN_BATCH_ROWS", 7)
    assert served.ok("GET", url) == whole


def test_pairs_joined_before_keep_pairs_are_left_out_and_counted(served: Client) -> None:
    rng = np.random.default_rng(24)
    n = 40
    p = rng.uniform(0.05, 0.95, n)
    y = (rng.uniform(size=n) < p).astype(float)
    ids = [f"r{i}" for i in range(n)]
    config = {"losses": [{"loss": "binary_crossentropy"}]}
    served.ok("PUT", "/v1/models/late", json=config)
    times = (T0 + np.arange(n) * 60.0).tolist()
    served.ok("POST", "/v1/models/late/predictions", json={"ids": ids, "predictions": p.tolist(), "timestamps": times})
    early = np.arange(n) % 3 == 0  # joined while the model drops the payloads
    served.ok("POST", "/v1/models/late/labels", json={"ids": [ids[i] for i in np.flatnonzero(early)],
                                                      "labels": y[early].tolist()})  # fmt: skip
    refused = served.request("GET", f"/v1/models/late/history?{WINDOW}&calibration=true")
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"][0]["loc"] == ["query", "calibration"]
    assert "keep_pairs" in refused.json()["detail"]
    served.ok("PUT", "/v1/models/late", json={**config, "keep_pairs": True})
    served.ok("POST", "/v1/models/late/labels", json={"ids": [ids[i] for i in np.flatnonzero(~early)],
                                                      "labels": y[~early].tolist()})  # fmt: skip
    (bucket,) = served.ok("GET", f"/v1/models/late/history?{WINDOW}&calibration=true")["buckets"]
    assert bucket["joined"] == n
    got = dict(bucket["calibration"])
    assert got.pop("pairs") == int((~early).sum())
    expected = served.ok("POST", "/v1/calibration", json={"predictions": p[~early].tolist(),
                                                          "labels": y[~early].tolist()})  # fmt: skip
    close(got, expected)


def test_a_bucket_whose_pairs_all_joined_before_keep_pairs_has_null(served: Client) -> None:
    served.ok("PUT", "/v1/models/k", json={"losses": [{"loss": "binary_crossentropy"}]})
    served.ok("POST", "/v1/models/k/predictions", json={"ids": ["a", "b"], "predictions": [0.2, 0.7],
                                                        "timestamps": [T0, T0 + HOUR]})  # fmt: skip
    served.ok("POST", "/v1/models/k/labels", json={"ids": ["a"], "labels": [0.0]})
    served.ok("PUT", "/v1/models/k", json={"losses": [{"loss": "binary_crossentropy"}], "keep_pairs": True})
    served.ok("POST", "/v1/models/k/labels", json={"ids": ["b"], "labels": [1.0]})
    first, second = served.ok("GET", f"/v1/models/k/history?{WINDOW}&calibration=true&bins=2")["buckets"]
    assert (first["joined"], first["calibration"]) == (1, None)
    assert second["calibration"]["pairs"] == 1
    assert second["calibration"]["bins"] == [{"lower": 0.5, "upper": 1.0, "confidence": 0.7, "accuracy": 1.0,
                                              "count": 1}]  # fmt: skip


def test_predictions_the_calibration_cannot_read_are_a_422_naming_it(served: Client) -> None:
    rng = np.random.default_rng(25)
    regression = {"losses": [{"loss": "mse"}], "keep_pairs": True}
    served.ok("PUT", "/v1/models/r", json=regression)
    ids = ["a", "b", "c"]
    served.ok("POST", "/v1/models/r/predictions", json={"ids": ids, "predictions": rng.normal(size=(3, 2)).tolist(),
                                                        "timestamps": [T0, T0 + 1, T0 + 2]})  # fmt: skip
    served.ok("POST", "/v1/models/r/labels", json={"ids": ids, "labels": rng.normal(size=(3, 2)).tolist()})
    refused = served.request("GET", f"/v1/models/r/history?{WINDOW}&calibration=true")
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    error = refused.json()["errors"][0]
    assert error["loc"] == ["query", "calibration"]
    assert f"bucket starting at {T0!r}" in error["msg"]
    assert "predictions" in error["msg"], error
    assert "from_logits is false" in error["msg"], error
    # logits the model's loss does not declare: the query says so, and the labels are then refused
    logits = served.request("GET", f"/v1/models/r/history?{WINDOW}&calibration=true&from_logits=true")
    assert logits.status_code == 422, logits.text
    message = logits.json()["errors"][0]["msg"]
    assert "labels" in message, message
    assert "class indices" in message, message


def test_the_query_is_checked_before_the_store_is_read(served: Client) -> None:
    served.ok("PUT", "/v1/models/h", json={"losses": [{"loss": "bce"}], "keep_pairs": True})
    cases = [
        ("calibration=maybe", "calibration"),
        ("calibration=true&bins=0", "bins"),
        ("calibration=true&bins=1001", "bins"),
        ("calibration=true&bins=2.5", "bins"),
        ("calibration=true&strategy=isotonic", "strategy"),
        ("calibration=true&from_logits=yes", "from_logits"),
        ("bins=10", "bins"),
        ("calibration=false&strategy=quantile", "strategy"),
    ]
    for query, field in cases:
        response = served.request("GET", f"/v1/models/h/history?{query}")
        assert response.status_code == 422, (query, response.text)
        assert response.json()["errors"][0]["loc"] == ["query", field], query
    assert served.request("GET", "/v1/models/nope/history?calibration=true").status_code == 404
    ok = served.ok("GET", "/v1/models/h/history?calibration=true&bins=1000&strategy=quantile&from_logits=false")
    assert ok["buckets"] == []


def test_the_window_holds_at_most_the_documented_values(served: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.usecases import bucket_calibration

    n = 30
    config, predictions, labels, _ = case("three-classes-logits-quantile", n, np.random.default_rng(26))
    log_cohort(served, "m", n, {**config, "keep_pairs": True}, predictions, labels, np.ones(n))
    joined = int(joined_mask(served, "m", n).sum())
    url = f"/v1/models/m/history?{WINDOW}&calibration=true"
    # each pair holds 3 prediction values and 1 label
    monkeypatch.setattr(bucket_calibration, "MAX_CALIBRATION_VALUES", 4 * joined)
    served.ok("GET", url)
    monkeypatch.setattr(bucket_calibration, "MAX_CALIBRATION_VALUES", 4 * joined - 1)
    refused = served.request("GET", url)
    assert refused.status_code == 422, refused.text
    error = refused.json()["errors"][0]
    assert error["loc"] == ["query", "calibration"]
    assert f"{4 * joined - 1:,}" in error["msg"]
