"""The delayed-labels store: SQL only, no HTTP and no loss math.

`Store.open(url)` connects to SQLite (`sqlite:///PATH`, the embedded default) or PostgreSQL
(`postgresql://...`, for replicas on several hosts), creates or checks the schema, and offers
the operations the service needs, each one transaction.
"""

from service.store.database import redacted
from service.store.errors import (
    QuotaExceededError,
    RowIdError,
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
from service.store.schema import ROW_BYTES, SCHEMA_VERSION
from service.store.store import DTYPES, Logged, Model, Pairs, Quota, Side, Store, Swept, Usage

__all__ = [
    "DTYPES",
    "ROW_BYTES",
    "SCHEMA_VERSION",
    "Logged",
    "Model",
    "Pairs",
    "Quota",
    "QuotaExceededError",
    "RowIdError",
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
    "Usage",
    "redacted",
]
