"""GET /v1/models/{model}/pairs, on SQLite and PostgreSQL: the joined pairs as Arrow, CSV and
NDJSON; the client's `history` and `pairs`; `loss-service history`.

Each bucket's mean recomputed from the exported shares is checked against /v1/loss over the
exported pairs' own predictions and labels (the engine's one-batch reduction) and against the
history; a Parquet file of the export is checked through `loss-service compute --dataset`.
"""

from __future__ import annotations

import functools
import io
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from service.engine import mean_of
from tests.api.test_history import DAY, HOUR, T0, Client, family, joined_mask, log_cohort, served  # noqa: F401

ARROW = "application/vnd.apache.arrow.stream"
WINDOW = f"start={T0:.0f}&end={T0 + 3 * HOUR:.0f}"


def exported(client: Client, model: str, query: str = WINDOW, accept: str = ARROW) -> httpx.Response:
    response = client.request("GET", f"/v1/models/{model}/pairs?{query}", headers={"accept": accept})
    assert response.status_code == 200, response.text
    return response


def arrow_table(client: Client, model: str, query: str = WINDOW) -> pa.Table:
    response = exported(client, model, query)
    assert response.headers["content-type"] == ARROW
    return pa.ipc.open_stream(response.content).read_all()


def keep_pairs(config: dict[str, Any]) -> dict[str, Any]:
    return {**config, "keep_pairs": True}


# float64 families of every reduction: weighted means, class weights with ignored targets, a
# batch mean, root-mean and sum aggregates; and float32 (shares kept in float64).
EXPORTED_FAMILIES = [
    "mse-keras",
    "mse-torch-float32",
    "scce-torch-ignored-class-weights",
    "kl-torch-batchmean",
    "xgboost-rmse-root-mean",
    "lightgbm-gamma-deviance-sum",
]


@pytest.mark.parametrize("name", EXPORTED_FAMILIES)
def test_each_buckets_mean_from_the_exported_shares_is_v1_loss_over_the_exported_pairs(
    served: Client,  # noqa: F811
    name: str,
) -> None:
    n = 60
    config, predictions, labels, weights = family(name, n, np.random.default_rng(21))
    times = log_cohort(served, "m", n, keep_pairs(config), predictions, labels, weights)
    joined = joined_mask(served, "m", n)
    table = arrow_table(served, "m")
    order = [f"p{i}" for i in np.lexsort((np.array([f"p{i}" for i in range(n)]), times)) if joined[i]]
    assert table.column("id").to_pylist() == order
    assert table.schema.metadata[b"loss_service.losses"] == orjson.dumps(
        served.ok("GET", f"/v1/models/m/history?{WINDOW}")["losses"]
    )
    history = served.ok("GET", f"/v1/models/m/history?{WINDOW}&step=3600")
    made = table.column("predicted_at").to_numpy()
    float32 = config.get("dtype") == "float32"
    for bucket in history["buckets"]:
        rows = (made >= bucket["start"]) & (made < bucket["start"] + HOUR)
        part = table.filter(pa.array(rows))
        for position, call in enumerate(config["losses"]):
            total = float(np.sum(part.column(f"loss_{position}_sum").to_numpy()))
            denominator = float(np.sum(part.column(f"loss_{position}_denominator").to_numpy()))
            aggregate = orjson.loads(table.schema.metadata[b"loss_service.aggregates"])[position]
            mean = mean_of(total, denominator, aggregate)
            got = bucket["losses"][position]
            assert total == pytest.approx(got["sum"], rel=1e-12)
            assert denominator == pytest.approx(got["denominator"], rel=1e-12)
            assert mean == pytest.approx(got["mean"], rel=1e-12)
            assert int(np.sum(part.column(f"loss_{position}_count").to_numpy())) == got["count"]
            # the pairs' own payloads, through the engine in one batch: an independent reference
            expected = served.ok(
                "POST",
                "/v1/loss",
                json={
                    "loss": call["loss"],
                    "options": call.get("options", {}),
                    "predictions": part.column("predictions").to_pylist(),
                    "labels": part.column("labels").to_pylist(),
                    "sample_weight": part.column("weight").to_pylist(),
                    "convention": config["convention"],
                    "dtype": config.get("dtype", "float64"),
                },
            )
            assert mean == pytest.approx(expected["mean"], rel=1e-5 if float32 else 1e-12)
    # the exported weights are the ones the labels came with
    weight_of = {f"p{i}": float(weights[i]) for i in range(n)}
    assert table.column("weight").to_pylist() == [weight_of[i] for i in table.column("id").to_pylist()]


def test_csv_and_ndjson_hold_the_same_values_as_the_arrow_stream(served: Client) -> None:  # noqa: F811
    n = 45
    config, predictions, labels, weights = family("scce-torch-ignored-class-weights", n, np.random.default_rng(3))
    log_cohort(served, "m", n, keep_pairs(config), predictions, labels, weights)
    table = arrow_table(served, "m")
    assert table.num_rows == joined_mask(served, "m", n).sum() > 0
    text = exported(served, "m", accept="text/csv")
    assert text.headers["content-type"].startswith("text/csv")
    # a null is an empty cell (a segment value is never empty: 1-64 characters)
    types = {field.name: pa.string() for field in table.schema if not pa.types.is_floating(field.type)}
    types.pop("loss_0_count")
    convert = pa_csv.ConvertOptions(column_types=types, strings_can_be_null=True)
    csv = pa_csv.read_csv(io.BytesIO(text.content), convert_options=convert)
    lines = exported(served, "m", accept="application/x-ndjson").content.decode().splitlines()
    records = [orjson.loads(line) for line in lines]
    assert csv.column_names == table.column_names == list(records[0])
    for name in table.column_names:
        expected = table.column(name).to_pylist()
        assert [record[name] for record in records] == expected, name
        if pa.types.is_fixed_size_list(table.schema.field(name).type):  # a row in a cell: its JSON text
            assert [orjson.loads(cell) for cell in csv.column(name).to_pylist()] == expected, name
        else:
            assert csv.column(name).to_pylist() == expected, name
    # the default, and a wildcard, are NDJSON
    default = served.request("GET", f"/v1/models/m/pairs?{WINDOW}")
    assert default.headers["content-type"] == "application/x-ndjson"
    assert default.content.decode().splitlines() == lines
    assert exported(served, "m", accept="text/html;q=0.5, */*;q=0.1").content.decode().splitlines() == lines


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from service.cli import main

    code = main(argv)
    return code, capsys.readouterr().out


def test_a_parquet_file_of_the_export_is_a_dataset_giving_the_historys_numbers(
    served: Client,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    n = 90
    config, predictions, labels, weights = family("scce-torch-ignored-class-weights", n, np.random.default_rng(8))
    log_cohort(served, "m", n, keep_pairs(config), predictions, labels, weights)
    path = tmp_path / "pairs.parquet"
    pq.write_table(arrow_table(served, "m"), path)
    history = served.ok("GET", f"/v1/models/m/history?{WINDOW}&step={3 * HOUR:.0f}")
    (bucket,) = history["buckets"]
    by_country = served.ok("GET", f"/v1/models/m/history?{WINDOW}&step={3 * HOUR:.0f}&by=country")
    options = config["losses"][0]["options"]
    argv = ["compute", "--loss", "scce", "--convention", "torch", "--dataset", str(path), "--json"]
    argv += ["--predictions-column", "predictions", "--labels-column", "labels", "--weight-column", "weight"]
    argv += [f"--option={key}={orjson.dumps(value).decode()}" for key, value in options.items()]
    code, out = run_cli([*argv, "--group-by", "segment_country"], capsys)
    assert code == 0, out
    result = orjson.loads(out)
    assert result["rows"] == bucket["joined"]
    assert result["mean"] == pytest.approx(bucket["losses"][0]["mean"], rel=1e-12)
    assert result["sum"] == pytest.approx(bucket["losses"][0]["sum"], rel=1e-12)
    assert result["denominator"] == pytest.approx(bucket["losses"][0]["denominator"], rel=1e-12)
    groups = {group["key"]["segment_country"]: group for group in result["groups"]}
    assert set(groups) == {entry["segment"] for entry in by_country["buckets"]}
    for entry in by_country["buckets"]:
        assert groups[entry["segment"]]["mean"] == pytest.approx(entry["losses"][0]["mean"], rel=1e-12)
    pytest.importorskip("dask")
    from service.datasets import Spec, evaluate_dask

    spec = Spec("scce", "predictions", "labels", "weight", options, convention="torch")
    assert evaluate_dask(str(path), spec).mean == pytest.approx(bucket["losses"][0]["mean"], rel=1e-12)


def test_pairs_outside_the_window_or_unjoined_are_left_out_and_a_model_without_keep_pairs_has_no_payloads(
    served: Client,  # noqa: F811
) -> None:
    n = 30
    config, predictions, labels, weights = family("mse-keras", n, np.random.default_rng(4))
    times = log_cohort(served, "m", n, config, predictions, labels, weights)
    joined = joined_mask(served, "m", n)
    query = f"start={T0 + HOUR:.0f}&end=1970-01-01T00:00:00Z"
    assert served.request("GET", f"/v1/models/m/pairs?{query}").status_code == 422
    query = f"start={T0 + HOUR:.0f}&end={T0 + 2 * HOUR:.0f}"
    table = arrow_table(served, "m", query)
    inside = joined & (times >= T0 + HOUR) & (times < T0 + 2 * HOUR)
    assert sorted(table.column("id").to_pylist()) == sorted(f"p{i}" for i in np.flatnonzero(inside))
    assert not {"predictions", "labels"} & set(table.column_names)
    assert T0 == 1799971200.0  # 2027-01-15T00:00:00Z
    rfc3339 = "start=2027-01-15T01:00:00Z&end=2027-01-15T02:00:00%2B00:00"
    assert arrow_table(served, "m", rfc3339).equals(table)
    # per-pair values: each pair's mse times its weight (keras weighs the values), computed naively
    expected = {f"p{i}": weights[i] * np.mean((predictions[i] - labels[i]) ** 2) for i in np.flatnonzero(inside)}
    got = dict(zip(table.column("id").to_pylist(), table.column("loss_0").to_pylist(), strict=True))
    assert got == pytest.approx(expected, rel=1e-12)
    arrived = table.column("label_arrived_at").to_numpy()
    assert ((arrived >= T0 + DAY) & (arrived <= T0 + 3 * DAY)).all()


def test_an_export_holds_one_batch_in_memory_whatever_the_window_holds(
    served: Client,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The peak of memory traced over a whole export is the same for 2,000 and 20,000 pairs (the
    stream holds one batch of pairs, 500 here, never the window's), and every record batch made
    has at most 500 rows: counted, not timed."""
    from service.usecases import export

    made: list[int] = []
    batch_of = export.record_batch

    def counted(columns: Any, rows: Any) -> pa.RecordBatch:
        made.append(len(rows))
        return batch_of(columns, rows)

    monkeypatch.setattr(export, "record_batch", counted)
    served.ok("PUT", "/v1/models/big", json={"losses": [{"loss": "mse"}, {"loss": "mae"}], "keep_pairs": True})
    rng = np.random.default_rng(0)
    peaks, logged = {}, 0
    for total in (2_000, 20_000):
        ids = [f"r{i:05d}" for i in range(logged, total)]
        values = rng.normal(size=(total - logged, 8)).tolist()
        times = (T0 + np.arange(logged, total) * 0.1).tolist()
        served.ok("POST", "/v1/models/big/predictions", json={"ids": ids, "predictions": values, "timestamps": times})
        served.ok("POST", "/v1/models/big/labels", json={"ids": ids, "labels": values})
        logged = total

        def whole_export() -> tuple[int, int]:
            tracemalloc.start()
            try:
                found = export.pairs(
                    served.store, "big", start=str(T0), end=str(T0 + DAY), form="arrow", batch_rows=500
                )
                sent = sum(len(chunk) for chunk in found.chunks)  # each chunk dropped once counted
                return tracemalloc.get_traced_memory()[1], sent
            finally:
                tracemalloc.stop()

        whole_export()  # first-use costs (imports, caches) are not the export's
        made.clear()
        peaks[total], sent = whole_export()
        assert (sum(made), max(made)) == (total, 500), made
        assert sent > total * 16 * 8  # the payloads were all sent
    assert peaks[20_000] < 1.5 * peaks[2_000], peaks


def whole_arrow_export(client: Client, model: str) -> bytes:
    """The Arrow export of `model`'s first day from T0, through the use case, all its chunks read."""
    from service.usecases import export

    return b"".join(export.pairs(client.store, model, start=str(T0), end=str(T0 + DAY), form="arrow").chunks)


def python_calls(run: Callable[[], Any], under: str) -> tuple[int, Any]:
    """`run()`'s result and the calls it makes from code under `under`: of Python functions
    defined there, and of functions written in C (NumPy's, pyarrow's, builtins) called there."""
    calls = 0

    def counting(frame: Any, event: str, _: Any) -> None:
        nonlocal calls
        if event in ("call", "c_call") and frame.f_code.co_filename.startswith(under):
            calls += 1

    sys.setprofile(counting)
    try:
        result = run()
    finally:
        sys.setprofile(None)
    return calls, result


def test_a_batch_of_ten_times_the_pairs_costs_the_export_no_more_python_calls(
    served: Client,  # noqa: F811
) -> None:
    """Each batch is read and built column by column: an Arrow export of 600 pairs in one batch
    makes as many calls from the service's code as one of 60 (segments, two losses, kept
    payloads of two label dtypes), none per row. Counted with a profile hook, not timed."""
    from service.usecases import export

    config = {"losses": [{"loss": "mse"}, {"loss": "mae"}], "keep_pairs": True, "segments": ["country", "device"]}
    service = str(Path(export.__file__).parents[1])
    calls: dict[int, int] = {}
    rng = np.random.default_rng(6)
    for total in (60, 600):
        model = f"m{total}"
        served.ok("PUT", f"/v1/models/{model}", json=config)
        ids = [f"r{i:04d}" for i in range(total)]
        countries = [["BR", None, "Zürich"][i % 3] for i in range(total)]
        served.ok(
            "POST",
            f"/v1/models/{model}/predictions",
            json={
                "ids": ids,
                "predictions": rng.normal(size=(total, 4)).tolist(),
                "timestamps": (T0 + np.arange(total) * 0.1).tolist(),
                "segments": {"country": countries, "device": [["ios", None][i % 2] for i in range(total)]},
            },
        )
        half = total // 2  # integer labels, then float ones
        labels = [rng.integers(0, 3, size=(half, 4)).tolist(), rng.normal(size=(total - half, 4)).tolist()]
        for part, values in zip((ids[:half], ids[half:]), labels, strict=True):
            served.ok("POST", f"/v1/models/{model}/labels", json={"ids": part, "labels": values})
        calls[total], body = python_calls(functools.partial(whole_arrow_export, served, model), service)
        table = pa.ipc.open_stream(body).read_all()
        assert table.num_rows == total
        assert table.column("segment_country").to_pylist() == countries
        assert table.column("labels").null_count == 0
    assert calls[600] == calls[60], calls


def test_a_store_failure_before_the_first_batch_is_a_503_and_after_it_ends_the_stream(
    served: Client,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store fails at its `failing_from`-th batch read: at the first, the request is a 503
    with Retry-After; at the second, the first batch has been handed over and the stream ends
    with the store's error, with no end-of-stream marker."""
    from service.store import StoreUnavailableError, pairs
    from service.usecases import export

    served.ok("PUT", "/v1/models/m", json={"losses": [{"loss": "mse"}]})
    ids = [f"r{i:02d}" for i in range(12)]
    values = np.arange(12.0).reshape(12, 1).tolist()
    served.ok("POST", "/v1/models/m/predictions", json={"ids": ids, "predictions": values, "timestamps": [T0] * 12})
    served.ok("POST", "/v1/models/m/labels", json={"ids": ids, "labels": values})
    read, reads = pairs.read_pairs, [0]
    failing_from = {"batch": 1}

    def failing(*args: Any) -> Any:
        reads[0] += 1
        if reads[0] >= failing_from["batch"]:
            raise StoreUnavailableError("the store is unavailable: a test's")
        return read(*args)

    monkeypatch.setattr(pairs, "read_pairs", failing)
    response = served.request("GET", f"/v1/models/m/pairs?{WINDOW}", headers={"accept": ARROW})
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    assert reads == [1]
    reads[0], failing_from["batch"] = 0, 2
    found = export.pairs(served.store, "m", start=str(T0), end=str(T0 + DAY), form="arrow", batch_rows=5)
    head = next(found.chunks)
    with pytest.raises(StoreUnavailableError):
        next(found.chunks)
    assert reads == [2]
    sent = pa.ipc.open_stream(head)
    assert sent.read_next_batch().column("id").to_pylist() == ids[:5]
    monkeypatch.setattr(pairs, "read_pairs", read)
    assert not head.endswith(b"\xff\xff\xff\xff\x00\x00\x00\x00")  # Arrow's end-of-stream marker
    whole = b"".join(export.pairs(served.store, "m", start=str(T0), end=str(T0 + DAY), form="arrow").chunks)
    assert whole.endswith(b"\xff\xff\xff\xff\x00\x00\x00\x00")


@pytest.mark.anyio
async def test_pairs_need_read_access_to_the_model(tmp_path: Path) -> None:
    """Pairs and history refuse alike: another key's model, a key without read, no key."""
    from service.config import Settings
    from service.server.api.access import digest
    from service.server.app import create_app

    keys = tmp_path / "keys.toml"
    keys.write_text(
        f'[[keys]]\nname = "fraud"\nkey_sha256 = "{digest("fraud-key-0123456789")}"\n'
        'scopes = ["ingest", "read", "admin"]\nmodels = ["fraud-*"]\n'
        f'[[keys]]\nname = "writer"\nkey_sha256 = "{digest("write-key-0123456789")}"\n'
        'scopes = ["ingest"]\nmodels = ["fraud-*"]\n'
    )
    app = create_app(Settings(api_keys_file=str(keys), store_url=f"sqlite:///{tmp_path}/store.sqlite3"))
    fraud = {"authorization": "Bearer fraud-key-0123456789"}
    writer = {"authorization": "Bearer write-key-0123456789"}
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://h") as c:
        assert (await c.put("/v1/models/fraud-1", json={"losses": [{"loss": "mse"}]}, headers=fraud)).status_code == 200
        assert (await c.put("/v1/models/fraud-2", json={"losses": [{"loss": "mse"}]}, headers=fraud)).status_code == 200
        for path in ("/v1/models/fraud-1/pairs", "/v1/models/fraud-1/history"):
            assert (await c.get(path, headers=fraud)).status_code == 200
            other = path.replace("fraud-1", "churn-1")  # another key's model
            assert (await c.get(other, headers=fraud)).status_code == 403, other
            for headers, status in ((writer, 403), ({}, 401)):
                refused = await c.get(path, headers=headers)
                assert refused.status_code == status, path
                assert refused.headers["content-type"] == "application/problem+json"
        other = [await c.get(f"/v1/models/churn-1/{route}", headers=fraud) for route in ("pairs", "history")]
        assert [r.status_code for r in other] == [403, 403]
        assert other[0].json()["detail"] == other[1].json()["detail"]


class PortalTransport(httpx.BaseTransport):
    """The blocking client's requests, sent to the app in-process through the test's portal."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.inner = httpx.ASGITransport(app=client.app)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def send() -> tuple[int, httpx.Headers, bytes]:
            await request.aread()
            response = await self.inner.handle_async_request(request)
            return response.status_code, response.headers, await response.aread()

        status, headers, content = self.client.portal.call(send)
        return httpx.Response(status, headers=headers, content=content, request=request)


def test_the_clients_history_and_pairs(served: Client) -> None:  # noqa: F811
    from service.client import AsyncLossClient, LossClient, NotFoundError

    n = 45
    config, predictions, labels, weights = family("mse-keras", n, np.random.default_rng(9))
    log_cohort(served, "m", n, keep_pairs(config), predictions, labels, weights)
    expected = served.ok("GET", f"/v1/models/m/history?{WINDOW}&by=country")
    table = arrow_table(served, "m")
    with LossClient("http://loss-service", transport=PortalTransport(served)) as client:
        assert client.history("m", start=T0, end=T0 + 3 * HOUR, by="country") == expected
        got = client.pairs("m", start=T0, end=T0 + 3 * HOUR)
        assert got.equals(table)
        frame = client.pairs("m", start="2027-01-15T00:00:00Z", end=T0 + 3 * HOUR, as_="pandas")
        assert frame["id"].tolist() == table.column("id").to_pylist()
        assert frame["loss_0_sum"].to_numpy().tolist() == table.column("loss_0_sum").to_pylist()
        with pytest.raises(NotFoundError):
            client.pairs("nope")
        with pytest.raises(ValueError, match="as_"):
            client.pairs("m", as_="polars")

    async def asynchronous() -> tuple[dict[str, Any], pa.Table]:
        transport = httpx.ASGITransport(app=served.app)
        async with AsyncLossClient("http://loss-service", transport=transport) as client:
            answer = await client.history("m", start=T0, end=T0 + 3 * HOUR, by="country")
            return answer, await client.pairs("m", start=T0, end=T0 + 3 * HOUR)

    answer, pairs = served.portal.call(asynchronous)
    assert answer == expected
    assert pairs.equals(table)


def test_the_history_command_prints_the_buckets(
    served: Client,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import service.client

    n = 45
    config, predictions, labels, weights = family("mse-keras", n, np.random.default_rng(2))
    log_cohort(served, "m", n, config, predictions, labels, weights)
    blocking = service.client.LossClient
    monkeypatch.setattr(service.client, "LossClient", functools.partial(blocking, transport=PortalTransport(served)))
    expected = served.ok("GET", f"/v1/models/m/history?{WINDOW}&by=country")
    window = ["--start", f"{T0:.0f}", "--end", f"{T0 + 3 * HOUR:.0f}", "--url", "http://loss-service"]
    code, out = run_cli(["history", "m", "--by", "country", *window, "--json"], capsys)
    assert code == 0
    assert orjson.loads(out) == expected
    code, out = run_cli(["history", "m", "--by", "country", *window], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "m: buckets of 3600 s by prediction time, by country"
    assert lines[1].split() == ["start", "(UTC)", "country", "predictions", "joined", "coverage", "delay", "p50", "s",
                                "mean_squared_error", "mean"]  # fmt: skip
    rows = [line.split() for line in lines[2:]]
    assert len(rows) == len(expected["buckets"]) == 9
    for row, bucket in zip(rows, expected["buckets"], strict=True):
        assert row[:3] == [
            "2027-01-15",
            f"{int((bucket['start'] - T0) // HOUR):02d}:00:00",
            bucket["segment"] or "(null)",
        ]
        assert int(row[3]) == bucket["predictions"]
        assert int(row[4]) == bucket["joined"]
        assert float(row[-1]) == pytest.approx(bucket["losses"][0]["mean"], rel=1e-5)
    from service.cli import main

    assert main(["history", "m", "--by", "device", *window]) == 3
    assert "by: is not a segment key of model m" in capsys.readouterr().err
    assert main(["history", "nope", *window]) == 3
    assert "nope" in capsys.readouterr().err
    assert main(["history", "m", "--start", "noon", "--url", "http://loss-service"]) == 3
    assert "start: expected Unix seconds or an RFC 3339 date-time" in capsys.readouterr().err
