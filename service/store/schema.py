"""The store's tables, created and versioned in the database itself.

`loss_schema.version` records the layout; a process that finds a newer version than
`SCHEMA_VERSION` refuses to start rather than write rows an older layout does not describe.
"""

from __future__ import annotations

from service.store.database import Database, Transaction
from service.store.errors import SchemaVersionError

SCHEMA_VERSION = 1
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


def migrate(database: Database) -> None:
    """Create the tables in an empty database; refuse a database written by a newer layout."""
    with database.transaction() as tx:
        if database.dialect.name == "postgresql":
            tx.execute("SELECT pg_advisory_xact_lock(?)", [_MIGRATION_LOCK])
        tx.execute("CREATE TABLE IF NOT EXISTS loss_schema (version INTEGER NOT NULL)")
        row = tx.one("SELECT max(version) FROM loss_schema")
        found = None if row is None else row[0]
        if found is None:
            _create(tx)
            tx.execute("INSERT INTO loss_schema (version) VALUES (?)", [SCHEMA_VERSION])
        elif found > SCHEMA_VERSION:
            raise SchemaVersionError(found, SCHEMA_VERSION)


def _create(tx: Transaction) -> None:
    for statement in _TABLES:
        tx.execute(statement.format(**tx.dialect.types))
