"""The delayed-labels store: SQL only, no HTTP and no loss math.

`Store.open(url)` connects to SQLite (`sqlite:///PATH`, the embedded default) or PostgreSQL
(`postgresql://...`, for replicas on several hosts), creates, migrates or checks the schema, and
offers the operations the service needs, each one transaction (the retention sweep and a model's
removal: one per batch of rows).
"""

from service.store.database import redacted
from service.store.errors import (
    RowShapeError,
    SchemaVersionError,
    StoreError,
    TooManyPendingError,
    UnknownModelError,
)
from service.store.schema import SCHEMA_VERSION
from service.store.store import DTYPES, SWEEP_BATCH_ROWS, Logged, Model, Pairs, Side, Store, Swept

__all__ = [
    "DTYPES",
    "SCHEMA_VERSION",
    "SWEEP_BATCH_ROWS",
    "Logged",
    "Model",
    "Pairs",
    "RowShapeError",
    "SchemaVersionError",
    "Side",
    "Store",
    "StoreError",
    "Swept",
    "TooManyPendingError",
    "UnknownModelError",
    "redacted",
]
