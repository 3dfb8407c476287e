"""Loss history: what keeping it costs a join, how fast it is read back, exported and swept.

    make bench-history    (or: .venv/bin/python bench/history.py [--pairs 1000000] [--large 10000000]
                           [--stores sqlite,postgresql] [--rounds 30] [--seconds 20])

Per database (SQLite always, PostgreSQL from Debian's postgresql package):
1. Join: one `loss-service serve` (one worker) over HTTP on loopback, in turns: /v1/loss on a batch
   of 1,000 x 10 float32 logits (the baseline), then those 1,000 predictions and their labels
   logged under fresh ids to a model without segments and to one with a segment key of 20
   values; the label request joins the pairs, computes their losses and keeps their history.
   Medians over the rounds, ratios to /v1/loss of this same run.
2. History: models holding `--pairs` and `--large` joined pairs made over 30 days (one segment
   key of 20 values, labels 0-2 h after their predictions), written straight into the store in
   batches through the store's own functions: the prediction and label rows as a join leaves
   them, and the rollups by `rollups.roll_up` (what each join calls). Then GET .../history over
   the 30 days hourly `by` the segment, in-process (the ASGI app called directly); the median
   of the rounds, and the ratio of the large model's time to the small one's.
3. Export: GET .../pairs of the `--pairs` model as an Arrow stream, in-process, against pyarrow
   writing a table of the same columns from memory to an Arrow stream, and against the database
   alone handing over the same rows (the export's SELECTs, batch by batch, fetched by the cursor).
4. Retention: a `loss-service serve` (sweep interval 1 s) over that store; one client logs
   single-row predictions to another model, one request at a time, for `--seconds / 2` alone,
   then for `--seconds` after the retention of the `--pairs` model is cut to 1 s so that its
   rows and rollups are swept (SWEEP_BATCH_ROWS rows and cells per transaction).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("LOSS_SERVICE_LOG_LEVEL", "warning")
# The servers started here run this checkout's code, whatever the interpreter has installed.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(ROOT))

from bench import tenants  # noqa: E402
from bench.store import server as plain_server  # noqa: E402
from service.store import (  # noqa: E402
    SWEEP_BATCH_ROWS,
    Store,
    rollups,
)
from service.store import history as store_history  # noqa: E402
from service.store import pairs as store_pairs  # noqa: E402
from service.store.database import Each, Packed  # noqa: E402
from service.store.schema import row_bytes_sql  # noqa: E402
from service.usecases.export import EXPORT_BATCH_ROWS  # noqa: E402
from tests import postgres  # noqa: E402
from tests.raw_http import Connection  # noqa: E402

ROWS, CLASSES, VALUES = 1_000, 10, 20
JOIN_CONFIG = {
    "losses": [{"loss": "scce", "options": {"from_logits": True}}],
    "dtype": "float32",
    "convention": "torch",
}
HISTORY_CONFIG = {"losses": [{"loss": "mse"}], "convention": "keras", "dtype": "float64", "segments": ["country"]}
HOUR, DAY = 3600.0, 86400.0
DAYS = 30
BATCH = 250_000
COUNTRIES = [f"c{i:02d}" for i in range(VALUES)]


# -- 1. join ---------------------------------------------------------------------------------------


def timed_post(http: httpx.Client, url: str, body: bytes) -> float:
    started = time.perf_counter()
    response = http.post(url, content=body, headers={"content-type": "application/json"})
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed


def configure_join(url: str, store_url: str, aged: int) -> None:
    """The three models the join is measured on; `aged` holds `aged` pairs of 30 days."""
    with httpx.Client(timeout=60) as http:
        http.put(f"{url}/v1/models/plain", json=JOIN_CONFIG).raise_for_status()
        http.put(f"{url}/v1/models/segmented", json={**JOIN_CONFIG, "segments": ["country"]}).raise_for_status()
        config = {**JOIN_CONFIG, "segments": ["country"], "retention_seconds": 100 * DAY}
        http.put(f"{url}/v1/models/aged", json=config).raise_for_status()
    store = Store.open(store_url)
    populate(store, "aged", aged, time.time(), seed=1)
    store.close()


def measure_join(url: str, rounds: int) -> dict[str, list[float]]:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(ROWS, CLASSES)).astype(np.float32)
    labels = rng.integers(0, CLASSES, ROWS)
    countries = [COUNTRIES[i] for i in rng.integers(0, VALUES, ROWS)]
    loss = orjson.dumps(
        {"loss": "scce", "predictions": logits, "labels": labels, "options": {"from_logits": True}, "dtype": "float32"},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    times: dict[str, list[float]] = {key: [] for key in ("loss", "join", "join, 1 segment key", "aged")}
    with httpx.Client(timeout=60) as http:
        for round_ in range(rounds + 2):  # two rounds of warm-up
            ids = [f"r{round_}-{i}" for i in range(ROWS)]
            answers = orjson.dumps({"ids": ids, "labels": labels}, option=orjson.OPT_SERIALIZE_NUMPY)
            plain = orjson.dumps({"ids": ids, "predictions": logits}, option=orjson.OPT_SERIALIZE_NUMPY)
            segmented = orjson.dumps(
                {"ids": ids, "predictions": logits, "segments": {"country": countries}},
                option=orjson.OPT_SERIALIZE_NUMPY,
            )
            sample = {"loss": timed_post(http, f"{url}/v1/loss", loss)}
            timed_post(http, f"{url}/v1/models/plain/predictions", plain)
            sample["join"] = timed_post(http, f"{url}/v1/models/plain/labels", answers)
            timed_post(http, f"{url}/v1/models/segmented/predictions", segmented)
            sample["join, 1 segment key"] = timed_post(http, f"{url}/v1/models/segmented/labels", answers)
            timed_post(http, f"{url}/v1/models/aged/predictions", segmented)
            sample["aged"] = timed_post(http, f"{url}/v1/models/aged/labels", answers)
            if round_ >= 2:
                for key, value in sample.items():
                    times[key].append(value)
    return times


# -- 2. a store holding history ----------------------------------------------------------------------


class InProcess:
    """The app called directly, its lifespan and requests on one event loop (sweeps off)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stack = contextlib.ExitStack()

    def __enter__(self) -> InProcess:
        from anyio.from_thread import start_blocking_portal

        from service.config import Settings
        from service.server.app import create_app

        self.app = create_app(Settings(store_url=self.url, sweep_interval=10**6))
        self.portal = self.stack.enter_context(start_blocking_portal())
        self.stack.enter_context(self.portal.wrap_async_context_manager(self.app.router.lifespan_context(self.app)))
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://loss-service")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    @property
    def store(self) -> Store:
        store: Store = self.app.state.store
        return store

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response: httpx.Response = self.portal.call(functools.partial(self.client.request, method, path, **kwargs))
        response.raise_for_status()
        return response


def populate(store: Store, name: str, pairs: int, now: float, seed: int) -> None:
    """`pairs` joined pairs made over the 30 days before `now`, written as joins write them, into
    model `name` (configured with HISTORY_CONFIG or another single loss and key `country`)."""
    model = store.model(name)
    assert model is not None
    call = model.config["losses"][0]
    variant = store_history.loss_variant(
        call["loss"], call["options"], model.config["convention"], model.config["dtype"]
    )
    rng = np.random.default_rng(seed)
    sqlite = store.database.dialect.name == "sqlite"
    first = now - DAYS * DAY
    for begin in range(0, pairs, BATCH):
        count = min(BATCH, pairs - begin)
        # Each batch is a slice of the 30 days, in time order, so that batches share few cells.
        span = DAYS * DAY / -(-pairs // BATCH)
        made = np.sort(first + (begin // BATCH) * span + rng.uniform(0, span, count))
        delays = rng.uniform(0, 2 * HOUR, count)
        arrived = made + delays
        index = rng.integers(-1, VALUES, count)  # -1: no value (null)
        segments = [{} if i < 0 else {"country": COUNTRIES[i]} for i in index.tolist()]
        texts = [None if i < 0 else orjson.dumps({"country": COUNTRIES[i]}).decode() for i in index.tolist()]
        errors = rng.normal(size=count)
        sums = errors * errors
        losses = [
            store_history.PairLosses(
                variant, "mean_squared_error", "mean", sums, np.ones(count), np.ones(count, np.int64)
            )
        ]
        ids = [f"p{begin + i}" for i in range(count)]
        times, arrivals = made.tolist(), arrived.tolist()
        with store.database.transaction() as tx:
            model_id = tx.one("SELECT id FROM loss_models WHERE name = ?", [name])[0]  # type: ignore[index]
            tx.insert_columns(
                "loss_predictions",
                [("model_id", "int", model_id), ("id", "text", Each(ids)), ("arrived", "real", Each(times)),
                 ("at", "real", None), ("segments", "text", Each(texts)), ("rolled_up", "small", 1),
                 ("label_arrived", "real", Each(arrivals)), ("joined_at", "real", Each(arrivals)),
                 ("dtype", "small", 0)],
                count,
            )  # fmt: skip
            losses_size = len(losses) * store_history.HISTORY_LOSS.itemsize
            tx.insert_columns(
                "loss_labels",
                [("model_id", "int", model_id), ("id", "text", Each(ids)), ("arrived", "real", Each(arrivals)),
                 ("losses", "blob", Packed(store_history.packed_losses(losses, count), losses_size)),
                 ("joined_at", "real", Each(arrivals)), ("dtype", "small", 0)],
                count,
            )  # fmt: skip
            cells = rollups.cells_of(made, segments, ["country"], now - 100 * DAY)
            rollups.roll_up(tx, model_id, cells, cells, delays, losses)
            tx.execute("UPDATE loss_models SET joined = joined + ? WHERE id = ?", [count, model_id])
    with store.database.transaction() as tx:  # the quotas' count of the bytes stored, as the store keeps it
        size = row_bytes_sql(tx.dialect.name)
        tx.execute(
            f"UPDATE loss_models SET stored_bytes = (SELECT coalesce(sum({size}), 0) FROM loss_predictions "
            "WHERE model_id = loss_models.id) WHERE name = ?",
            [name],
        )
    if not sqlite:
        with store.database.transaction() as tx:
            tx.execute("ANALYZE")


def history_query(app: InProcess, name: str, now: float, rounds: int) -> tuple[float, int]:
    """The median time of GET .../history over the 30 days hourly by country; its bucket count."""
    end = now - now % HOUR + HOUR
    query = f"start={end - DAYS * DAY:.0f}&end={end:.0f}&step=3600&by=country"
    answer = app.request("GET", f"/v1/models/{name}/history?{query}").json()  # warm-up
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        app.request("GET", f"/v1/models/{name}/history?{query}")
        times.append(time.perf_counter() - started)
    return statistics.median(times), len(answer["buckets"])


# -- 3. export --------------------------------------------------------------------------------------


def export(app: InProcess, name: str, now: float, rounds: int) -> tuple[float, float, float, int]:
    """Median times of the Arrow export of the whole model, of pyarrow writing its table, and of
    the database handing over the export's rows (`fetched`)."""
    query = f"start={now - DAYS * DAY - DAY:.0f}&end={now + DAY:.0f}"
    headers = {"accept": "application/vnd.apache.arrow.stream"}
    exported, written, floor = [], [], []
    table = None
    for _ in range(rounds):
        started = time.perf_counter()
        body = app.request("GET", f"/v1/models/{name}/pairs?{query}", headers=headers).content
        exported.append(time.perf_counter() - started)
        # The same columns from memory: the table read back, combined into one chunk per column.
        table = pa.ipc.open_stream(body).read_all().combine_chunks()
        del body
        sink = io.BytesIO()
        started = time.perf_counter()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        written.append(time.perf_counter() - started)
        started = time.perf_counter()
        assert fetched(app.store, name, now - DAYS * DAY - DAY, now + DAY) == table.num_rows
        floor.append(time.perf_counter() - started)
    assert table is not None
    return statistics.median(exported), statistics.median(written), statistics.median(floor), table.num_rows


def fetched(store: Store, name: str, start: float, end: float) -> int:
    """The export's SELECTs (`pairs.pairs_query`), batch by batch in a read transaction each,
    as the cursor fetches them (PostgreSQL's in its binary format, as the store reads them), and
    nothing else: what the database alone takes to hand the rows over. Returns the rows."""
    database, batch, after, rows = store.database, EXPORT_BATCH_ROWS, None, 0
    while True:
        with database.transaction(write=False) as tx:
            model_id = tx.one("SELECT id FROM loss_models WHERE name = ?", [name])[0]  # type: ignore[index]
            sql, params = store_pairs.pairs_query(
                database.dialect.name, model_id, start, end, after, batch, ["country"], False
            )
            cursor = tx._cursor  # the driver's own fetch, without the store's conversion
            cursor.execute(tx._sql(sql), params, **({} if database.dialect.name == "sqlite" else {"binary": True}))
            found = cursor.fetchall()
        rows += len(found)
        if len(found) < batch:
            return rows
        after = (found[-1][1], found[-1][0])


# -- 4. retention -----------------------------------------------------------------------------------


async def sweep_under_writes(port: int, url: str, name: str, seconds: float) -> dict[str, Any]:
    alone = await tenants.writes(port, seconds / 2, 0)
    admin = Connection("127.0.0.1", port)
    cut = orjson.dumps({**HISTORY_CONFIG, "retention_seconds": 1})
    headers = {**tenants.bearer("admin"), "content-type": "application/json"}
    answer = await admin.request("PUT", f"/v1/models/{name}", cut, headers)
    assert answer.status == 200, answer
    admin.close()
    started = time.perf_counter()
    loaded = await tenants.writes(port, seconds, 10**8)
    left = await asyncio.to_thread(left_rows, url, name)
    return {"alone": alone, "loaded": loaded, "left": left, "elapsed": time.perf_counter() - started}


def left_rows(url: str, name: str) -> tuple[int, int]:
    """The model's prediction rows and rollup cells left."""
    store = Store.open(url)
    try:
        with store.database.transaction(write=False) as tx:
            model = "(SELECT id FROM loss_models WHERE name = ?)"
            rows = tx.one(f"SELECT count(*) FROM loss_predictions WHERE model_id = {model}", [name])
            cells = tx.one(f"SELECT count(*) FROM loss_rollups WHERE model_id = {model}", [name])
        return int(rows[0]) if rows else -1, int(cells[0]) if cells else -1
    finally:
        store.close()


def cells_of(url: str, name: str) -> int:
    return left_rows(url, name)[1]


# -- the run ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=1_000_000, help="joined pairs of the history and export model")
    parser.add_argument("--large", type=int, default=10_000_000, help="joined pairs of the larger history model")
    parser.add_argument("--aged", type=int, default=200_000, help="pairs already held by the aged join model")
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--rounds", type=int, default=30, help="rounds of the join measurement")
    parser.add_argument("--seconds", type=float, default=20.0, help="writes during the sweep")
    parser.add_argument("--skip", default="", help="parts to leave out: join,history,export,retention")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    with contextlib.ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-history-")))
        cluster = None
        if "postgresql" in args.stores:
            if postgres.binaries() is None:
                print(f"# PostgreSQL skipped: {postgres.MISSING}")
            else:
                cluster = stack.enter_context(postgres.cluster(fsync=True))

        def stores(label: str) -> dict[str, str]:
            urls = {}
            if "sqlite" in args.stores:
                urls["sqlite"] = f"sqlite:///{directory}/{label}.sqlite3"
            if cluster is not None:
                urls["postgresql"] = postgres.fresh_database(cluster)
            return urls

        print(f"# one worker per server; {os.cpu_count()} cores")
        if "join" not in skip:
            print(f"\n## Join: {ROWS:,} x {CLASSES} float32 per request, median of {args.rounds} rounds, loopback")
            print(f"(aged: the model already holds {args.aged:,} pairs of the 30 days before, and their rollups)")
            print(
                "| store | /v1/loss | join | ratio | join, 1 segment key of 20 values | ratio | the same, aged "
                "| ratio |"
            )
            print("|---|---|---|---|---|---|---|---|")
            for name, url in stores("join").items():
                with plain_server(url) as served:
                    configure_join(served, url, args.aged)
                with plain_server(url) as served:
                    measured = measure_join(served, args.rounds)
                loss, join, segmented, aged = (
                    statistics.median(measured[k]) * 1e3 for k in ("loss", "join", "join, 1 segment key", "aged")
                )
                print(
                    f"| {name} | {loss:.2f} ms | {join:.2f} ms | {join / loss:.2f}x "
                    f"| {segmented:.2f} ms | {segmented / loss:.2f}x | {aged:.2f} ms | {aged / loss:.2f}x |",
                    flush=True,
                )
        if skip >= {"history", "export", "retention"}:
            return
        for name, url in stores("history").items():
            now = time.time()
            result: dict[str, Any] = {"store": name}
            with InProcess(url) as app:
                sizes = [args.pairs] + ([] if "history" in skip else [args.large])
                for pairs in sizes:
                    started = time.perf_counter()
                    config = {**HISTORY_CONFIG, "retention_seconds": 100 * DAY}
                    app.request("PUT", f"/v1/models/pairs-{pairs}", json=config)
                    populate(app.store, f"pairs-{pairs}", pairs, now, seed=pairs)
                    result[f"built {pairs}"] = time.perf_counter() - started
                    print(f"# {name}: {pairs:,} pairs written in {result[f'built {pairs}']:.0f} s", flush=True)
                if "history" not in skip:
                    for pairs in sizes:
                        result[f"history {pairs}"] = history_query(app, f"pairs-{pairs}", now, 9)
                if "export" not in skip:
                    result["export"] = export(app, f"pairs-{args.pairs}", now, 3)
            if "retention" not in skip:
                keys_file = directory / f"keys-{name}.toml"
                keys_file.write_text(tenants.keys_toml(list(tenants.KEYS)))
                store = Store.open(url)
                store.configure_model("writes", tenants.CONFIG, 10.0**9, now=now)
                store.close()
                result["cells"] = cells_of(url, f"pairs-{args.pairs}")
                with tenants.server(url, keys_file) as (_, port):
                    result["retention"] = asyncio.run(
                        sweep_under_writes(port, url, f"pairs-{args.pairs}", args.seconds)
                    )
            report(result, args)


def report(result: dict[str, Any], args: argparse.Namespace) -> None:
    name, small, large = result["store"], args.pairs, args.large
    print(f"\n## {name}")
    if f"history {small}" in result:
        (t_small, buckets), (t_large, _) = result[f"history {small}"], result[f"history {large}"]
        print(f"history, 30 days hourly by a key of {VALUES} values ({buckets:,} buckets), median of 9:")
        print(
            f"  {small:,} pairs {t_small * 1e3:.1f} ms; {large:,} pairs {t_large * 1e3:.1f} ms; "
            f"ratio {t_large / t_small:.2f}x"
        )
    if "export" in result:
        exported, written, floor, rows = result["export"]
        print(
            f"Arrow export of {rows:,} pairs {exported * 1e3:.0f} ms; pyarrow writing the same columns "
            f"{written * 1e3:.0f} ms; ratio {exported / written:.2f}x; the database handing the rows over "
            f"{floor * 1e3:.0f} ms ({written * 3e3:.0f} ms is 3x pyarrow's time; the export is {exported / floor:.2f}x "
            "the database's)"
        )
    if "retention" in result:
        swept = result["retention"]
        rows, cells = swept["left"]
        print(f"writes alone            {tenants.percentiles(swept['alone'])}")
        print(f"writes during the sweep {tenants.percentiles(swept['loaded'])}")
        print(
            f"swept in {swept['elapsed']:.0f} s: {small - rows:,} of {small:,} prediction rows, "
            f"{result['cells'] - cells:,} of {result['cells']:,} rollup cells ({SWEEP_BATCH_ROWS} per transaction)"
        )


if __name__ == "__main__":
    main()
