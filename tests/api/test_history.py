"""GET /v1/models/{model}/history, on SQLite and PostgreSQL, with the clock the test sets.

Each bucket's mean is checked against /v1/loss over the bucket's own pairs (one request, the
engine's reduction of that batch): the history never computes a loss again, it adds up the
shares each pair kept when it joined. Quantiles are checked against NumPy's exact order
statistics of naively computed per-pair losses; label delays against the times the test chose.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest

from service.store import Store

HOUR, DAY = 3600.0, 86400.0
# A whole day: buckets and cells start at multiples of 60 s, 1 h and 1 d from it.
T0 = 1_800_000_000.0 - (1_800_000_000.0 % DAY)


class Clock:
    """`time` for the use cases: every request happens when the test says."""

    def __init__(self) -> None:
        self.now = T0 + 3 * HOUR

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        import time

        return time.monotonic()


class Client:
    """Blocking calls to the app in-process (its lifespan and requests on one event loop)."""

    def __init__(self, portal: Any, app: Any, clock: Clock) -> None:
        self.portal, self.app, self.clock = portal, app, clock
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://loss-service")

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        response: httpx.Response = self.portal.call(functools.partial(self.client.request, method, url, **kwargs))
        return response

    def ok(self, method: str, url: str, **kwargs: Any) -> Any:
        response = self.request(method, url, **kwargs)
        assert response.status_code == 200, response.text
        return response.json()

    @property
    def store(self) -> Store:
        store: Store = self.app.state.store
        return store


async def no_sweeps(*_: Any) -> None:
    await anyio.sleep_forever()


@pytest.fixture(params=["sqlite", "postgresql"])
def served(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    from anyio.from_thread import start_blocking_portal

    from service.config import Settings
    from service.server import app as app_module
    from service.server.app import create_app
    from service.usecases import history, ingest, upkeep

    url = f"sqlite:///{tmp_path}/store.sqlite3"
    if request.param == "postgresql":
        url = str(request.getfixturevalue("postgres_url"))
    clock = Clock()
    for module in (ingest, upkeep, history):
        monkeypatch.setattr(module, "time", clock)
    monkeypatch.setattr(app_module, "sweep_forever", no_sweeps)
    app = create_app(Settings(store_url=url, sweep_interval=3600))
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(app.router.lifespan_context(app)):
        yield Client(portal, app, clock)


# -- the families of losses: (config, predictions, labels, weights) for n pairs ----------------------


def family(name: str, n: int, rng: np.random.Generator) -> tuple[dict[str, Any], Any, Any, Any]:
    weights = rng.uniform(0.2, 3.0, n)
    if name == "mse-keras":
        config = {"losses": [{"loss": "mse"}], "convention": "keras"}
        return config, rng.normal(size=(n, 2)), rng.normal(size=(n, 2)), weights
    if name == "mse-torch-float32":
        config = {"losses": [{"loss": "mse"}], "convention": "torch", "dtype": "float32"}
        return config, rng.normal(size=(n, 3)), rng.normal(size=(n, 3)), weights
    if name == "scce-torch-ignored-class-weights":
        labels = rng.integers(0, 3, n)
        labels[::5] = -100
        options = {"from_logits": True, "ignore_index": -100, "class_weight": [1.0, 2.0, 0.5]}
        config = {"losses": [{"loss": "scce", "options": options}], "convention": "torch"}
        return config, rng.normal(size=(n, 3)), labels, weights
    if name == "scce-keras-ignored-float32":
        labels = rng.integers(0, 3, n)
        labels[::4] = 7
        options = {"from_logits": True, "ignore_class": 7}
        config = {"losses": [{"loss": "scce", "options": options}], "convention": "keras", "dtype": "float32"}
        return config, rng.normal(size=(n, 3)), labels, weights
    if name == "kl-torch-batchmean":
        p = rng.dirichlet(np.ones(4), n)
        config = {"losses": [{"loss": "kl_divergence", "options": {"log_input": True}}], "convention": "torch"}
        return config, np.log(p), rng.dirichlet(np.ones(4), n), weights
    if name == "cosine-keras-negative":
        config = {"losses": [{"loss": "cosine_similarity"}], "convention": "keras"}
        return config, rng.normal(size=(n, 3)) + 1.0, rng.normal(size=(n, 3)) + 1.0, weights
    if name == "xgboost-rmse-root-mean":
        config = {"losses": [{"loss": "rmse"}, {"loss": "mae"}], "convention": "xgboost"}
        return config, rng.normal(size=n), rng.normal(size=n), weights
    if name == "lightgbm-gamma-deviance-sum":
        config = {"losses": [{"loss": "gamma_deviance"}], "convention": "lightgbm"}
        return config, rng.uniform(0.5, 2, n), rng.uniform(0.5, 2, n), weights
    if name == "catboost-logloss":
        config = {"losses": [{"loss": "Logloss"}], "convention": "catboost"}
        return config, rng.uniform(0.05, 0.95, n), rng.integers(0, 2, n).astype(float), weights
    raise AssertionError(name)


FAMILIES = [
    "mse-keras",
    "mse-torch-float32",
    "scce-torch-ignored-class-weights",
    "scce-keras-ignored-float32",
    "kl-torch-batchmean",
    "cosine-keras-negative",
    "xgboost-rmse-root-mean",
    "lightgbm-gamma-deviance-sum",
    "catboost-logloss",
]


def log_cohort(
    client: Client, model: str, n: int, config: dict[str, Any], predictions: Any, labels: Any, weights: Any
) -> np.ndarray[Any, Any]:
    """n predictions made over T0's first 3 hours, their labels arriving over the next 3 days in
    three batches (the last third never: still pending). Returns the predictions' times."""
    client.ok("PUT", f"/v1/models/{model}", json={**config, "segments": ["country"], "retention_seconds": 5 * DAY})
    times = T0 + (np.arange(n) * (3 * HOUR / n)).round(3)
    countries = [["BR", "US", None][i % 3] for i in range(n)]
    ids = [f"p{i}" for i in range(n)]
    client.ok(
        "POST",
        f"/v1/models/{model}/predictions",
        json={
            "ids": ids,
            "predictions": np.asarray(predictions).tolist(),
            "timestamps": times.tolist(),
            "segments": {"country": countries},
        },
    )
    order = np.random.default_rng(5).permutation(n)
    for day, chosen in enumerate(np.array_split(order[: 2 * n // 3], 2), start=1):
        client.clock.now = T0 + day * DAY + 600 * day
        client.ok(
            "POST",
            f"/v1/models/{model}/labels",
            json={
                "ids": [ids[i] for i in chosen],
                "labels": np.asarray(labels)[chosen].tolist(),
                "sample_weight": np.asarray(weights)[chosen].tolist(),
            },
        )
    return times


def joined_mask(client: Client, model: str, n: int) -> np.ndarray[Any, Any]:
    rows = client.store.prediction_rows(model, 0, 4e9, limit=10 * n)
    assert rows is not None
    joined = {row.id for row in rows if row.joined_at is not None}
    return np.array([f"p{i}" in joined for i in range(n)])


@pytest.mark.parametrize("name", FAMILIES)
def test_each_buckets_mean_is_what_v1_loss_gives_for_its_joined_pairs(served: Client, name: str) -> None:
    n = 90
    config, predictions, labels, weights = family(name, n, np.random.default_rng(11))
    times = log_cohort(served, "m", n, config, predictions, labels, weights)
    joined = joined_mask(served, "m", n)
    answer = served.ok("GET", f"/v1/models/m/history?start={T0:.0f}&end={T0 + 3 * HOUR:.0f}&step=3600")
    assert [b["start"] for b in answer["buckets"]] == [T0, T0 + HOUR, T0 + 2 * HOUR]
    float32 = config.get("dtype") == "float32"
    for bucket in answer["buckets"]:
        pairs = joined & (times >= bucket["start"]) & (times < bucket["start"] + HOUR)
        assert bucket["predictions"] == int(((times >= bucket["start"]) & (times < bucket["start"] + HOUR)).sum())
        assert bucket["joined"] == int(pairs.sum())
        for position, call in enumerate(config["losses"]):
            expected = served.ok(
                "POST",
                "/v1/loss",
                json={
                    "loss": call["loss"],
                    "options": call.get("options", {}),
                    "predictions": np.asarray(predictions)[pairs].tolist(),
                    "labels": np.asarray(labels)[pairs].tolist(),
                    "sample_weight": np.asarray(weights)[pairs].tolist(),
                    "convention": config["convention"],
                    "dtype": config.get("dtype", "float64"),
                },
            )
            got = bucket["losses"][position]
            # float32: /v1/loss sums float32 values in float32, the history their float64 shares
            assert got["mean"] == pytest.approx(expected["mean"], rel=1e-5 if float32 else 1e-12)
            assert got["sum"] == pytest.approx(expected["sum"], rel=1e-5 if float32 else 1e-12)
            assert got["denominator"] == pytest.approx(expected["denominator"], rel=1e-6 if float32 else 1e-12)
            assert got["count"] == expected["count"]
    assert answer["exact"] == [True] * len(config["losses"])


def test_labels_over_days_fill_the_coverage_and_expire_after_retention(served: Client) -> None:
    n = 60
    config, predictions, labels, weights = family("mse-keras", n, np.random.default_rng(3))
    times = log_cohort(served, "m", n, config, predictions, labels, weights)
    whole_day = f"/v1/models/m/history?start={T0:.0f}&end={T0 + DAY:.0f}&step=86400"
    (bucket,) = served.ok("GET", whole_day)["buckets"]
    assert (bucket["predictions"], bucket["joined"], bucket["pending"], bucket["expired"]) == (60, 40, 20, 0)
    assert bucket["coverage"] == pytest.approx(40 / 60)
    # label delays: arrival (the clock at each label batch) minus prediction time, within 1 %
    joined = joined_mask(served, "m", n)
    order = np.random.default_rng(5).permutation(n)
    arrival = np.full(n, np.nan)
    for day, chosen in enumerate(np.array_split(order[: 2 * n // 3], 2), start=1):
        arrival[chosen] = T0 + day * DAY + 600 * day
    delays = (arrival - times)[joined]
    for q, key in ((0.5, "p50"), (0.9, "p90")):
        assert bucket["label_delay"][key] == pytest.approx(np.quantile(delays, q, method="lower"), rel=0.01)
    # Retention 5 days: the predictions (logged at T0 + 3 h) go, the unjoined ones as expired.
    # A cell stays until its end is 5 days old: the day's (ending at T0 + 1 d) is kept, counting
    # the expired predictions; the hours' (ending by T0 + 3 h) go with the rows.
    hourly = f"/v1/models/m/history?start={T0:.0f}&end={T0 + DAY:.0f}&step=3600"
    assert sum(b["joined"] for b in served.ok("GET", hourly)["buckets"]) == 40
    served.clock.now = T0 + 3 * HOUR + 5 * DAY + 1
    served.store.sweep_expired(served.clock.now)
    (bucket,) = served.ok("GET", whole_day)["buckets"]
    assert (bucket["predictions"], bucket["joined"], bucket["pending"], bucket["expired"]) == (60, 40, 0, 20)
    assert served.ok("GET", hourly)["buckets"] == []
    served.clock.now = T0 + 6 * DAY + 1
    served.store.sweep_expired(served.clock.now)
    assert served.ok("GET", whole_day)["buckets"] == []


def test_by_a_segment_splits_each_bucket_by_value_and_null(served: Client) -> None:
    n = 60
    config, predictions, labels, weights = family("mse-keras", n, np.random.default_rng(4))
    times = log_cohort(served, "m", n, config, predictions, labels, weights)
    joined = joined_mask(served, "m", n)
    countries = np.array([["BR", "US", None][i % 3] for i in range(n)], dtype=object)
    answer = served.ok("GET", f"/v1/models/m/history?start={T0:.0f}&end={T0 + 3 * HOUR:.0f}&step=3600&by=country")
    assert answer["by"] == "country"
    assert {(b["start"], b["segment"]) for b in answer["buckets"]} == {
        (T0 + h * HOUR, value) for h in range(3) for value in ("BR", "US", None)
    }
    for bucket in answer["buckets"]:
        here = (times >= bucket["start"]) & (times < bucket["start"] + HOUR) & (countries == bucket["segment"])
        assert bucket["predictions"] == int(here.sum())
        pairs = here & joined
        assert bucket["joined"] == int(pairs.sum())
        expected = served.ok(
            "POST",
            "/v1/loss",
            json={
                "loss": "mse",
                "predictions": predictions[pairs].tolist(),
                "labels": labels[pairs].tolist(),
                "sample_weight": weights[pairs].tolist(),
            },
        )
        assert bucket["losses"][0]["mean"] == pytest.approx(expected["mean"], rel=1e-12)
    plain = served.ok("GET", f"/v1/models/m/history?start={T0:.0f}&end={T0 + HOUR:.0f}")
    assert "segment" not in plain["buckets"][0]


def test_per_pair_quantiles_are_within_one_percent_of_the_exact_ones(served: Client) -> None:
    n = 600
    rng = np.random.default_rng(8)
    predictions, labels = rng.normal(size=(n, 2)) * rng.lognormal(0, 2, (n, 1)), rng.normal(size=(n, 2))
    served.ok("PUT", "/v1/models/q", json={"losses": [{"loss": "mse"}, {"loss": "cosine_similarity"}]})
    ids = [str(i) for i in range(n)]
    times = (T0 + np.arange(n) * 5.0).tolist()
    served.ok(
        "POST", "/v1/models/q/predictions", json={"ids": ids, "predictions": predictions.tolist(), "timestamps": times}
    )
    served.ok("POST", "/v1/models/q/labels", json={"ids": ids, "labels": labels.tolist()})
    (bucket,) = served.ok("GET", f"/v1/models/q/history?start={T0:.0f}&end={T0 + HOUR:.0f}&step=3600")["buckets"]
    # naive float64 per-pair losses: the mean squared error of the row, and Keras's cosine
    # similarity (negative: -cos of the l2-normalised rows)
    mse = ((predictions - labels) ** 2).mean(axis=1)
    unit = lambda a: a / np.sqrt((a * a).sum(axis=1, keepdims=True))  # noqa: E731
    cosine = -(unit(predictions) * unit(labels)).sum(axis=1)
    for got, exact in zip(bucket["losses"], (mse, cosine), strict=True):
        for q, key in ((0.5, "p50"), (0.9, "p90"), (0.99, "p99")):
            expected = np.quantile(exact, q, method="lower")
            assert abs(got[key] - expected) <= 0.01 * abs(expected) + 1e-12, (key, got[key], expected)


def test_the_rollups_and_the_scan_of_rows_give_the_same_answer(served: Client) -> None:
    n = 90
    config, predictions, labels, weights = family("scce-torch-ignored-class-weights", n, np.random.default_rng(2))
    log_cohort(served, "m", n, config, predictions, labels, weights)
    # Every prediction is made in [T0, T0 + 3 h): a window starting 30 s early holds the same
    # pairs in its three buckets, but no rollup level divides its start, so the rows are read.
    aligned = served.ok("GET", f"/v1/models/m/history?start={T0:.0f}&end={T0 + 3 * HOUR:.0f}&step=10800&by=country")
    shifted = served.ok(
        "GET", f"/v1/models/m/history?start={T0 - 30:.0f}&end={T0 + 3 * HOUR:.0f}&step=10800&by=country"
    )
    assert len(aligned["buckets"]) == len(shifted["buckets"]) == 3
    for a, b in zip(aligned["buckets"], shifted["buckets"], strict=True):
        assert b["start"] == a["start"] - 30
        for key in ("segment", "predictions", "joined", "pending", "expired", "coverage", "label_delay"):
            assert a[key] == b[key], key
        for x, y in zip(a["losses"], b["losses"], strict=True):
            assert x["count"] == y["count"]
            for key in ("mean", "sum", "denominator"):
                assert x[key] == pytest.approx(y[key], rel=1e-12)
            assert (x["p50"], x["p90"], x["p99"]) == (y["p50"], y["p90"], y["p99"])


def test_a_query_reads_as_many_cells_for_ten_times_the_pairs(served: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """The history's cost grows with its buckets, not its pairs: counted in rows read."""
    from service.store import rollup_reads

    read: list[int] = []
    original = rollup_reads.read_cells

    def counting(*args: Any, **kwargs: Any) -> Any:
        cells, losses = original(*args, **kwargs)
        read.append(len(cells) + len(losses))
        return cells, losses

    monkeypatch.setattr(rollup_reads, "read_cells", counting)
    for model, n in (("small", 300), ("large", 3000)):
        config, predictions, labels, weights = family("mse-keras", n, np.random.default_rng(n))
        log_cohort(served, model, n, config, predictions, labels, weights)
        served.ok("GET", f"/v1/models/{model}/history?start={T0:.0f}&end={T0 + DAY:.0f}&step=3600&by=country")
    assert read[0] == read[1] > 0


def test_a_query_does_as_much_sketch_work_for_ten_times_the_pairs(
    served: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each bucket's quantiles are searched in its cell's sketch, not read through it: the numbers
    read from the sketches' bytes are as many for ten times the pairs (and no bin is decoded)."""
    from service.values import sketch

    reads: list[int] = []
    decoded: list[int] = []
    read, decode = sketch._read, sketch._Layout.decoded

    def counting(raw: Any, at: Any, width: int) -> Any:
        reads.append(len(at))
        return read(raw, at, width)

    def decoding(layout: Any) -> Any:
        found = decode(layout)
        decoded.append(len(found[0]))
        return found

    counted = []
    for model, n in (("small", 300), ("large", 3000)):
        config, predictions, labels, weights = family("mse-keras", n, np.random.default_rng(n))
        log_cohort(served, model, n, config, predictions, labels, weights)
        with monkeypatch.context() as patched:
            patched.setattr(sketch, "_read", counting)
            patched.setattr(sketch._Layout, "decoded", decoding)
            reads.clear()
            served.ok("GET", f"/v1/models/{model}/history?start={T0:.0f}&end={T0 + DAY:.0f}&step=3600&by=country")
        counted.append(sum(reads))
    assert counted[0] == counted[1] > 0
    assert decoded == []


def layout_0(blob: bytes) -> bytes:
    """A sketch of the running-count layout (docs/delayed-labels.md) rewritten in layout 0,
    byte by byte: each bin a little-endian int32 code and int64 count."""
    assert blob[0] == ord("D")
    assert blob[3] == 1
    code_width, count_width = blob[1], blob[2]
    (first,) = struct.unpack("<i", blob[4:8])
    n = (len(blob) - 8) // (code_width + count_width)
    at, before, bins = 8 + n * code_width, 0, []
    for i in range(n):
        code = first + int.from_bytes(blob[8 + i * code_width : 8 + (i + 1) * code_width], "little")
        running = int.from_bytes(blob[at + i * count_width : at + (i + 1) * count_width], "little")
        bins.append(struct.pack("<iq", code, running - before))
        before = running
    return b"".join(bins)


def test_rollups_of_sketch_layout_0_answer_and_merge_as_the_running_count_layout(served: Client) -> None:
    """A store whose rollups hold sketches of layout 0 (12 bytes a bin) answers the
    same history, and joins merge new pairs into those sketches."""
    n = 300
    rng = np.random.default_rng(12)
    predictions, labels = rng.normal(size=(n, 2)) * rng.lognormal(0, 2, (n, 1)), rng.normal(size=(n, 2))
    served.ok("PUT", "/v1/models/m", json={"losses": [{"loss": "mse"}], "segments": ["country"]})
    ids = [str(i) for i in range(n)]
    times = T0 + np.arange(n) * 30.0  # 2.5 hours
    countries = np.array([["BR", "US", None][i % 3] for i in range(n)], dtype=object)
    served.ok(
        "POST",
        "/v1/models/m/predictions",
        json={"ids": ids, "predictions": predictions.tolist(), "timestamps": times.tolist(),
              "segments": {"country": countries.tolist()}},
    )  # fmt: skip
    half = rng.permutation(n)
    first, second = half[: n // 2], half[n // 2 :]
    served.clock.now = T0 + 3 * HOUR
    served.ok("POST", "/v1/models/m/labels", json={"ids": [ids[i] for i in first], "labels": labels[first].tolist()})
    query = f"/v1/models/m/history?start={T0:.0f}&end={T0 + 3 * HOUR:.0f}&step=3600&by=country"
    answer = served.ok("GET", query)
    rewritten = 0
    with served.store.database.transaction() as tx:
        for table, column in (("loss_rollups", "delays"), ("loss_rollup_losses", "sketch")):
            for level, key, start, value, blob in tx.all(
                f"SELECT level, segment_key, start, segment_value, {column} FROM {table} WHERE {column} IS NOT NULL"
            ):
                tx.execute(
                    f"UPDATE {table} SET {column} = ? WHERE level = ? AND segment_key = ? AND start = ? "
                    "AND segment_value = ?",
                    [layout_0(bytes(blob)), level, key, start, value],
                )
                rewritten += 1
    assert rewritten > 0
    assert served.ok("GET", query) == answer
    served.clock.now = T0 + 4 * HOUR
    served.ok("POST", "/v1/models/m/labels", json={"ids": [ids[i] for i in second], "labels": labels[second].tolist()})
    arrival = np.where(np.isin(np.arange(n), first), T0 + 3 * HOUR, T0 + 4 * HOUR)
    mse = ((predictions - labels) ** 2).mean(axis=1)  # naive float64 per-pair losses
    buckets = served.ok("GET", query)["buckets"]
    assert len(buckets) == 9
    for bucket in buckets:
        here = (times >= bucket["start"]) & (times < bucket["start"] + HOUR) & (countries == bucket["segment"])
        assert bucket["joined"] == int(here.sum())
        for q, key in ((0.5, "p50"), (0.9, "p90"), (0.99, "p99")):
            expected = np.quantile(mse[here], q, method="lower")
            assert abs(bucket["losses"][0][key] - expected) <= 0.01 * expected, (key, bucket)
        for q, key in ((0.5, "p50"), (0.9, "p90")):
            expected = np.quantile((arrival - times)[here], q, method="lower")
            assert abs(bucket["label_delay"][key] - expected) <= 0.01 * expected, (key, bucket)


def test_segments_are_checked_against_the_declared_keys(served: Client) -> None:
    served.ok("PUT", "/v1/models/s", json={"losses": [{"loss": "mse"}], "segments": ["country", "device"]})
    base = {"ids": ["a", "b", "c"], "predictions": [[1.0], [2.0], [3.0]]}
    cases = [
        ({"country": ["BR", "US"]}, ["body", "segments", "country"], "has 2 values and ids has 3"),
        ({"city": ["x", "y", "z"]}, ["body", "segments", "city"], "is not a segment key"),
        ({"country": ["BR", "", None]}, ["body", "segments", "country", 1], "1 to 64 characters"),
        ({"country": ["BR", "x" * 65, None]}, ["body", "segments", "country", 1], "1 to 64 characters"),
        ({"device": ["ios", "a\nb", None]}, ["body", "segments", "device", 1], "printable"),
        ({"device": ["ios", "web", 3]}, ["body", "segments", "device", 2], "string"),
    ]
    for segments, loc, words in cases:
        response = served.request("POST", "/v1/models/s/predictions", json={**base, "segments": segments})
        assert response.status_code == 422, response.text
        error = response.json()["errors"][0]
        assert error["loc"] == loc, (segments, error)
        assert words in error["msg"], error
    # nothing was stored by any of them
    assert served.ok("GET", "/v1/models/s")["pending_predictions"] == 0
    accepted = served.ok("POST", "/v1/models/s/predictions", json={**base, "segments": {"device": ["a", None, "b"]}})
    assert accepted["accepted"] == 3


def test_a_re_put_adds_segment_keys_with_earlier_rows_null_and_never_removes_one(served: Client) -> None:
    served.ok("PUT", "/v1/models/s", json={"losses": [{"loss": "mse"}], "segments": ["country"]})
    first = {"ids": ["a", "b"], "predictions": [[1.0], [2.0]], "timestamps": [T0 + 10, T0 + 20]}
    served.ok("POST", "/v1/models/s/predictions", json={**first, "segments": {"country": ["BR", "US"]}})
    served.ok("PUT", "/v1/models/s", json={"losses": [{"loss": "mse"}], "segments": ["country", "device"]})
    later = {"ids": ["c"], "predictions": [[3.0]], "timestamps": [T0 + 30], "segments": {"device": ["ios"]}}
    served.ok("POST", "/v1/models/s/predictions", json=later)
    served.ok("POST", "/v1/models/s/labels", json={"ids": ["a", "b", "c"], "labels": [[1.5], [2.0], [1.0]]})
    url = f"/v1/models/s/history?start={T0:.0f}&end={T0 + HOUR:.0f}&step=3600&by=device"
    by_device = {b["segment"]: b for b in served.ok("GET", url)["buckets"]}
    assert {k: (v["predictions"], v["joined"]) for k, v in by_device.items()} == {None: (2, 2), "ios": (1, 1)}
    assert by_device[None]["losses"][0]["mean"] == pytest.approx(0.125)  # (0.25 + 0) / 2
    assert by_device["ios"]["losses"][0]["mean"] == pytest.approx(4.0)
    refused = served.request("PUT", "/v1/models/s", json={"losses": [{"loss": "mse"}], "segments": ["device"]})
    assert refused.status_code == 409, refused.text
    assert "country" in refused.json()["detail"]
    assert served.ok("GET", "/v1/models/s")["segments"] == ["country", "device"]


def test_history_refuses_what_it_cannot_answer(served: Client) -> None:
    served.ok("PUT", "/v1/models/h", json={"losses": [{"loss": "mse"}], "segments": ["country"]})
    cases = [
        ("start=100&end=50", ["query", "end"]),
        ("start=100&end=100", ["query", "end"]),
        ("start=0&end=1000000000&step=1", ["query", "step"]),
        ("step=0.5", ["query", "step"]),
        ("step=abc", ["query", "step"]),
        ("step=nan", ["query", "step"]),
        ("start=yesterday", ["query", "start"]),
        ("end=2026-01-31T12:00:00", ["query", "end"]),
        ("start=inf", ["query", "start"]),
        ("by=device", ["query", "by"]),
    ]
    for query, loc in cases:
        response = served.request("GET", f"/v1/models/h/history?{query}")
        assert response.status_code == 422, (query, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["errors"][0]["loc"] == loc, query
    assert served.request("GET", "/v1/models/nope/history").status_code == 404
    answer = served.ok("GET", "/v1/models/h/history?start=2026-01-31T00:00:00Z&end=2026-01-31T01:00:00%2B00:00")
    assert (answer["start"], answer["end"], answer["buckets"]) == (1769817600.0, 1769821200.0, [])


def test_a_bucket_without_joined_pairs_has_null_means_and_quantiles(served: Client) -> None:
    served.ok("PUT", "/v1/models/p", json={"losses": [{"loss": "mse"}]})
    served.ok("POST", "/v1/models/p/predictions", json={"ids": ["a"], "predictions": [[1.0]], "timestamps": [T0]})
    (bucket,) = served.ok("GET", f"/v1/models/p/history?start={T0:.0f}&end={T0 + 60:.0f}&step=60")["buckets"]
    assert (bucket["predictions"], bucket["joined"], bucket["pending"], bucket["coverage"]) == (1, 0, 1, 0.0)
    assert bucket["label_delay"] == {"p50": None, "p90": None}
    assert bucket["losses"] == [
        {"mean": None, "sum": 0.0, "denominator": 0.0, "count": 0, "p50": None, "p90": None, "p99": None}
    ]


def test_keep_pairs_keeps_joined_payloads_and_counts_their_bytes(served: Client) -> None:
    served.ok("PUT", "/v1/models/k", json={"losses": [{"loss": "mse"}, {"loss": "mae"}], "keep_pairs": True})
    served.ok("PUT", "/v1/models/d", json={"losses": [{"loss": "mse"}, {"loss": "mae"}]})
    for model in ("k", "d"):
        served.ok(
            "POST",
            f"/v1/models/{model}/predictions",
            json={"ids": ["a", "b"], "predictions": [[1.0, 2.0], [3.0, 4.0]], "segments": {}},
        )
        served.ok("POST", f"/v1/models/{model}/labels", json={"ids": ["a", "b"], "labels": [[0.0, 0.0], [1.0, 1.0]]})
    rows = served.store.prediction_rows("k", 0, 4e9)
    assert rows is not None
    assert [np.frombuffer(row.prediction or b"").tolist() for row in rows] == [[1.0, 2.0], [3.0, 4.0]]
    assert [np.frombuffer(row.label or b"").tolist() for row in rows] == [[0.0, 0.0], [1.0, 1.0]]
    dropped = served.store.prediction_rows("d", 0, 4e9)
    assert dropped is not None
    assert [(row.prediction, row.label) for row in dropped] == [(None, None), (None, None)]
    # per row: 64 + its id, its payload where kept, and on the prediction row two losses of 32 bytes
    kept = 2 * (64 + 1 + 16) + 2 * (64 + 1 + 16) + 2 * 2 * 32
    assert served.ok("GET", "/v1/models/k")["stored_bytes"] == kept
    assert served.ok("GET", "/v1/models/d")["stored_bytes"] == kept - 4 * 16


def test_a_loss_that_reads_its_batch_is_marked_inexact(served: Client) -> None:
    config = {
        "losses": [{"loss": "circle"}, {"loss": "log_loss"}, {"loss": "log_loss", "options": {"classes": [0, 1]}}]
    }
    served.ok("PUT", "/v1/models/c", json=config)
    answer = served.ok("GET", "/v1/models/c/history")
    assert answer["exact"] == [False, False, True]
    assert answer["losses"] == ["circle", "log_loss", "log_loss"]


def test_the_export_reads_joined_rows_in_batches_in_time_order(served: Client) -> None:
    n = 25
    config, predictions, labels, weights = family("mse-keras", n, np.random.default_rng(1))
    times = log_cohort(served, "m", n, config, predictions, labels, weights)
    batches = list(served.store.prediction_batches("m", T0, T0 + DAY, batch_rows=4, joined_only=True))
    rows = [row for batch in batches for row in batch]
    assert all(len(batch) <= 4 for batch in batches)
    joined = joined_mask(served, "m", n)
    assert [row.id for row in rows] == [f"p{i}" for i in np.argsort(times, kind="stable") if joined[i]]
    assert all(row.label_arrived is not None and row.weight is not None for row in rows)
    assert all(len(row.losses) == 1 for row in rows)
    assert list(served.store.prediction_batches("nope", 0, 1)) == []


def test_deleting_a_model_removes_its_rollups(served: Client) -> None:
    n = 30
    config, predictions, labels, weights = family("mse-keras", n, np.random.default_rng(6))
    log_cohort(served, "gone", n, config, predictions, labels, weights)
    log_cohort(served, "kept", n, config, predictions, labels, weights)

    def cells() -> dict[str, int]:
        with served.store.database.transaction(write=False) as tx:
            rows = tx.all(
                "SELECT m.name, count(*) FROM loss_rollups r JOIN loss_models m ON m.id = r.model_id GROUP BY m.name"
            )
            losses = tx.one("SELECT count(*) FROM loss_rollup_losses")
        assert losses is not None
        return {**dict(rows), "losses": int(losses[0])}

    before = cells()
    assert before["gone"] == before["kept"] > 0
    assert served.store.delete_model("gone", batch_rows=7)
    after = cells()
    assert "gone" not in after
    assert after["kept"] == before["kept"]
    assert after["losses"] * 2 == before["losses"]
