"""The store's tables, created and versioned in the database itself.

The layout is the list of named migrations `MIGRATIONS`, applied in order; `loss_schema`
holds one row per version applied, and `SCHEMA_VERSION` is the number of migrations. A process
that finds an older version applies the migrations it lacks, in one transaction, at start; one
that finds a newer version refuses to start rather than write rows an older layout does not
describe. New migrations go at the end of the list, never in between.
"""

from __future__ import annotations

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

# A model's rows still waiting for their other half, in arrival order: the oldest pending row is
# the first entry of the model's range, however many joined rows the model keeps.
_PENDING_INDEXES = [
    "CREATE INDEX loss_predictions_pending ON loss_predictions (model_id, arrived) WHERE joined_at IS NULL",
    "CREATE INDEX loss_labels_pending ON loss_labels (model_id, arrived) WHERE joined_at IS NULL",
]

# (name, statements): version n of the layout is the first n migrations.
MIGRATIONS: list[tuple[str, list[str]]] = [
    ("tables", _TABLES),
    ("pending_rows_index", _PENDING_INDEXES),
]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(database: Database) -> None:
    """Bring the database to `SCHEMA_VERSION` (an empty one gets every migration); refuse a
    database written by a newer layout."""
    with database.transaction() as tx:
        if database.dialect.name == "postgresql":
            tx.execute("SELECT pg_advisory_xact_lock(?)", [_MIGRATION_LOCK])
        tx.execute("CREATE TABLE IF NOT EXISTS loss_schema (version INTEGER NOT NULL)")
        row = tx.one("SELECT max(version) FROM loss_schema")
        found = 0 if row is None or row[0] is None else int(row[0])
        if found > SCHEMA_VERSION:
            raise SchemaVersionError(found, SCHEMA_VERSION)
        for version in range(found + 1, SCHEMA_VERSION + 1):
            _apply(tx, MIGRATIONS[version - 1][1])
            tx.execute("INSERT INTO loss_schema (version) VALUES (?)", [version])


def _apply(tx: Transaction, statements: list[str]) -> None:
    for statement in statements:
        tx.execute(statement.format(**tx.dialect.types))
