"""The store's tables, created and versioned in the database itself.

`loss_schema.version` records the layout: the number of `MIGRATIONS` applied, in order, each in
the transaction that records it. A process that finds a newer version than `SCHEMA_VERSION`
refuses to start rather than write rows an older layout does not describe.
"""

from __future__ import annotations

from collections.abc import Callable

from service.store.database import Database, Transaction
from service.store.errors import SchemaVersionError

# Any fixed number: every process that migrates takes this PostgreSQL advisory lock first.
_MIGRATION_LOCK = 0x1055_5E41

# One row per configured model. The counters are kept in the row, updated in the same
# transaction as the rows they count, so reading them never scans the row tables.
_TABLES = [
    """
    CREATE TABLE loss_models (
        id {serial},
        name TEXT NOT NULL UNIQUE,
        config TEXT NOT NULL,
        retention_seconds {real} NOT NULL,
        created_at {real} NOT NULL,
        updated_at {real} NOT NULL,
        prediction_shape TEXT,
        label_shape TEXT,
        pending_predictions {int} NOT NULL DEFAULT 0,
        pending_labels {int} NOT NULL DEFAULT 0,
        joined {int} NOT NULL DEFAULT 0,
        expired_predictions {int} NOT NULL DEFAULT 0,
        expired_labels {int} NOT NULL DEFAULT 0
    )
    """,
    # A row's payload is its values' bytes in the dtype named by `dtype` (see store.DTYPES); it is
    # dropped once the row is joined, and the row kept until retention ends, so that a repeated
    # id is still recognised as a duplicate. `at`: the prediction's own timestamp, if given.
    """
    CREATE TABLE loss_predictions (
        model_id {int} NOT NULL,
        id TEXT NOT NULL,
        arrived {real} NOT NULL,
        at {real},
        joined_at {real},
        dtype {small} NOT NULL,
        payload {blob},
        PRIMARY KEY (model_id, id)
    ) {rows_table_options}
    """,
    """
    CREATE TABLE loss_labels (
        model_id {int} NOT NULL,
        id TEXT NOT NULL,
        arrived {real} NOT NULL,
        weight {real},
        joined_at {real},
        dtype {small} NOT NULL,
        payload {blob},
        PRIMARY KEY (model_id, id)
    ) {rows_table_options}
    """,
    # The retention sweep and the oldest pending row read rows in arrival order.
    "CREATE INDEX loss_predictions_by_arrival ON loss_predictions (model_id, arrived)",
    "CREATE INDEX loss_labels_by_arrival ON loss_labels (model_id, arrived)",
]


# What a stored row counts towards its model's `stored_bytes` (and so its key's quota), beside
# the UTF-8 bytes of its id and of its payload: its other columns and its index entries. Joined
# rows keep no payload but are kept until retention ends, so they count too.
ROW_BYTES = 64


def _octets(dialect: str, column: str) -> str:
    length = "octet_length({})" if dialect == "postgresql" else "length(CAST({} AS BLOB))"
    return length.format(column)


def row_bytes_sql(dialect: str) -> str:
    """SQL for one row's count towards `stored_bytes`; the same sum the store keeps in Python.
    A prediction row adds `history_bytes_sql`."""
    return f"({ROW_BYTES} + {_octets(dialect, 'id')} + coalesce({_octets(dialect, 'payload')}, 0))"


def history_bytes_sql(dialect: str, table: str = "loss_predictions") -> str:
    """SQL for what a row's history adds to its count: the bytes of its losses (`HISTORY_LOSS`,
    one entry per configured loss, on the row whose arrival completed the pair) and, for a
    prediction, the UTF-8 bytes of its segments (JSON); and the bytes of its expected losses
    (`EXPECTED_LOSS`, one entry per estimated loss, beside the losses)."""
    losses = f"coalesce({_octets(dialect, 'losses')}, 0) + coalesce({_octets(dialect, 'expected')}, 0)"
    if table == "loss_predictions":
        return f"(coalesce({_octets(dialect, 'segments')}, 0) + {losses})"
    return f"({losses})"


def table_bytes_sql(dialect: str, table: str) -> str:
    """One row's count towards `stored_bytes` in `table` (loss_predictions or loss_labels)."""
    return f"({row_bytes_sql(dialect)} + {history_bytes_sql(dialect, table)})"


def _create(tx: Transaction) -> None:
    for statement in _TABLES:
        tx.execute(statement.format(**tx.dialect.types))


def _stored_bytes(tx: Transaction) -> None:
    """Each model's `stored_bytes`: the sum of `row_bytes_sql` over its rows, kept exact by every
    transaction that inserts, joins or deletes rows, so that quotas never scan the row tables."""
    tx.execute("ALTER TABLE loss_models ADD COLUMN stored_bytes {int} NOT NULL DEFAULT 0".format(**tx.dialect.types))
    size = row_bytes_sql(tx.dialect.name)
    tx.execute(
        "UPDATE loss_models SET stored_bytes = "
        f"(SELECT coalesce(sum({size}), 0) FROM loss_predictions WHERE model_id = loss_models.id) + "
        f"(SELECT coalesce(sum({size}), 0) FROM loss_labels WHERE model_id = loss_models.id)"
    )


def _pending_rows_index(tx: Transaction) -> None:
    """A model's rows still waiting for their other half, in arrival order: its oldest pending
    row is the first entry of its range, however many joined rows the model keeps. `IF NOT
    EXISTS`: a store whose version was set back by hand keeps its indexes and still starts."""
    for table in ("loss_predictions", "loss_labels"):
        tx.execute(f"CREATE INDEX IF NOT EXISTS {table}_pending ON {table} (model_id, arrived) WHERE joined_at IS NULL")


def _inference_events(tx: Transaction) -> None:
    """Halves of KServe inference-logger events (service/usecases/events.py) waiting for their
    other half: one row per event id (`half` 0: the request, 1: the response), its `meta` and
    `payload` as the use case encoded them, `size` what it counts towards the bound on waiting
    halves (ROW_BYTES, the id's bytes, the meta's and the payload's). Once the event completes,
    `done_at` is set and both are dropped; the row is kept for the model's retention, so that a
    repeated half is a duplicate. The model's row counts the waiting halves and their bytes (the
    bound on them is checked without a scan) and the halves that expired unmatched."""
    types = tx.dialect.types
    tx.execute(
        """
        CREATE TABLE IF NOT EXISTS loss_events (
            model_id {int} NOT NULL,
            id TEXT NOT NULL,
            half {small} NOT NULL,
            arrived {real} NOT NULL,
            done_at {real},
            size {int} NOT NULL,
            meta TEXT,
            payload {blob},
            PRIMARY KEY (model_id, id)
        ) {rows_table_options}
        """.format(**types)
    )
    tx.execute("CREATE INDEX IF NOT EXISTS loss_events_by_arrival ON loss_events (model_id, arrived)")
    tx.execute(
        "CREATE INDEX IF NOT EXISTS loss_events_pending ON loss_events (model_id, arrived) WHERE done_at IS NULL"
    )
    for column in ("pending_events", "pending_event_bytes", "expired_events"):
        if column not in _columns(tx, "loss_models"):
            tx.execute(f"ALTER TABLE loss_models ADD COLUMN {column} {types['int']} NOT NULL DEFAULT 0")


def _columns(tx: Transaction, table: str) -> set[str]:
    """The table's columns (a step applied again, on a store whose version was set back, adds none twice)."""
    if tx.dialect.name == "sqlite":
        return {row[0] for row in tx.all("SELECT name FROM pragma_table_info(?)", [table])}
    sql = "SELECT column_name FROM information_schema.columns WHERE table_name = ? AND table_schema = current_schema()"
    return {row[0] for row in tx.all(sql, [table])}


def _history(tx: Transaction) -> None:
    """Loss history (docs/delayed-labels.md, "How history is kept").

    A prediction row gains its `segments` (a JSON object of its non-null segment values, sorted
    by key; NULL without any), `label_arrived` (its label's arrival, once joined), and `rolled_up`
    (1: it is counted in its model's rollups; rows logged before this layout are not). Both row
    tables gain `losses`, written on the row whose arrival completes a pair (so that a join
    inserts it, never updates it row by row): per configured loss one `HISTORY_LOSS` entry, the
    pair's share of the loss's sum and denominator. `loss_rollups` holds, per model, level
    (bucket width in seconds), segment key ('' for all rows), bucket start (by prediction time)
    and segment value ('' for null), the predictions logged, joined and expired and a sketch of
    the label delays (service.values.sketch); `loss_rollup_losses` per such cell and configured
    loss (`variant`, a hash of the loss's configuration) its sum, denominator, count of values and
    a sketch of each pair's loss. `ends` (start + level) is what the retention sweep reads: a cell
    goes once it ends more than the model's retention ago."""
    types = tx.dialect.types
    present = _columns(tx, "loss_predictions")
    added = {"segments": "TEXT", "losses": types["blob"], "label_arrived": types["real"], "rolled_up": types["small"]}
    for column, kind in added.items():
        if column not in present:  # a store whose version was set back by hand still starts
            tx.execute(f"ALTER TABLE loss_predictions ADD COLUMN {column} {kind}")
    if "losses" not in _columns(tx, "loss_labels"):
        tx.execute(f"ALTER TABLE loss_labels ADD COLUMN losses {types['blob']}")
    cell = "model_id {int} NOT NULL, level {int} NOT NULL, segment_key TEXT NOT NULL, start {real} NOT NULL, "
    cell += "segment_value TEXT NOT NULL"
    tx.execute(
        f"CREATE TABLE IF NOT EXISTS loss_rollups ({cell}, ends {{real}} NOT NULL, "
        "predictions {int} NOT NULL DEFAULT 0, joined {int} NOT NULL DEFAULT 0, "
        "expired {int} NOT NULL DEFAULT 0, delays {blob}, "
        "PRIMARY KEY (model_id, level, segment_key, start, segment_value)) {rows_table_options}".format(**types)
    )
    tx.execute(
        f"CREATE TABLE IF NOT EXISTS loss_rollup_losses ({cell}, variant {{int}} NOT NULL, loss TEXT NOT NULL, "
        "sum {real} NOT NULL, denominator {real} NOT NULL, count {int} NOT NULL, sketch {blob}, "
        "PRIMARY KEY (model_id, level, segment_key, start, segment_value, variant)) {rows_table_options}".format(
            **types
        )
    )
    tx.execute("CREATE INDEX IF NOT EXISTS loss_rollups_by_end ON loss_rollups (model_id, ends)")
    # The rows of a window of prediction times: the history's scan, and the pairs' export.
    tx.execute(
        "CREATE INDEX IF NOT EXISTS loss_predictions_by_time ON loss_predictions (model_id, (coalesce(at, arrived)))"
    )


def _shared_labels(tx: Transaction) -> None:
    """Shared labels (docs/comparisons.md): a model's `labels_from`, the model whose logged labels
    are copied to it, as a column of its row too, so that a label log finds the models that follow
    its model on an index, not by reading every configuration."""
    if "labels_from" not in _columns(tx, "loss_models"):
        tx.execute("ALTER TABLE loss_models ADD COLUMN labels_from TEXT")
    tx.execute("CREATE INDEX IF NOT EXISTS loss_models_by_source ON loss_models (labels_from)")


def _expected_losses(tx: Transaction) -> None:
    """The expected loss (docs/estimates.md): both row tables gain `expected`, written beside
    `losses` on the row whose arrival completes a pair: per estimated loss one `EXPECTED_LOSS`
    entry, the moments of the pair's shares under the belief its model held when the pair joined.
    `loss_rollup_losses` gains `expected`, those moments summed over the cell's joined pairs (five
    float64), and `loss_models` gains `estimate_fit`, the model's calibration fit (JSON)."""
    types = tx.dialect.types
    for table in ("loss_predictions", "loss_labels", "loss_rollup_losses"):
        if "expected" not in _columns(tx, table):
            tx.execute(f"ALTER TABLE {table} ADD COLUMN expected {types['blob']}")
    if "estimate_fit" not in _columns(tx, "loss_models"):
        tx.execute("ALTER TABLE loss_models ADD COLUMN estimate_fit TEXT")


# Named, applied in order, never edited once released: a new layout is a new migration at the end.
MIGRATIONS: list[tuple[str, Callable[[Transaction], None]]] = [
    ("tables", _create),
    ("stored bytes per model", _stored_bytes),
    ("pending rows index", _pending_rows_index),
    ("inference events", _inference_events),
    ("loss history", _history),
    ("shared labels", _shared_labels),
    ("expected losses", _expected_losses),
]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(database: Database) -> None:
    """Bring the database to `SCHEMA_VERSION`, applying the migrations it lacks in one transaction;
    refuse a database written by a newer layout."""
    with database.transaction() as tx:
        if database.dialect.name == "postgresql":
            tx.execute("SELECT pg_advisory_xact_lock(?)", [_MIGRATION_LOCK])
        tx.execute("CREATE TABLE IF NOT EXISTS loss_schema (version INTEGER NOT NULL)")
        row = tx.one("SELECT max(version) FROM loss_schema")
        found = 0 if row is None or row[0] is None else int(row[0])
        if found > SCHEMA_VERSION:
            raise SchemaVersionError(found, SCHEMA_VERSION)
        for _, step in MIGRATIONS[found:]:
            step(tx)
        if found < SCHEMA_VERSION:
            tx.execute("DELETE FROM loss_schema")
            tx.execute("INSERT INTO loss_schema (version) VALUES (?)", [SCHEMA_VERSION])
