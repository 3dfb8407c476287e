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
    StoreFailureError,
    StoreFullError,
    StoreUnavailableError,
    TooManyPendingError,
    UnknownModelError,
)
from service.store.health import StoreHealth
from service.store.schema import SCHEMA_VERSION
from service.store.store import DELETE_BATCH_ROWS, DTYPES, SWEEP_BATCH_ROWS, Logged, Model, Pairs, Side, Store, Swept

__all__ = [
    "DELETE_BATCH_ROWS",
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
    "StoreFailureError",
    "StoreFullError",
    "StoreHealth",
    "StoreUnavailableError",
    "Swept",
    "TooManyPendingError",
    "UnknownModelError",
    "redacted",
]
