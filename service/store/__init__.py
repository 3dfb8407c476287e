"""The delayed-labels store: SQL only, no HTTP and no loss math.

`Store.open(url)` connects to SQLite (`sqlite:///PATH`, the embedded default) or PostgreSQL
(`postgresql://...`, for replicas on several hosts), creates, migrates or checks the schema, and
offers the operations the service needs, each one transaction (the retention sweep and a model's
removal: one per batch of rows).
"""

from service.store.database import redacted
from service.store.errors import (
    FollowedModelError,
    LabelSourceError,
    QuotaExceededError,
    RowIdError,
    RowShapeError,
    SchemaVersionError,
    SegmentKeysRemovedError,
    StoreError,
    StoreFailureError,
    StoreFullError,
    StoreUnavailableError,
    TooManyPendingError,
    TooManyPendingEventsError,
    UnknownModelError,
)
from service.store.events import REQUEST, RESPONSE, EventBounds, EventCounts
from service.store.health import StoreHealth
from service.store.records import EventLogged, EventRows, Logged, Model, Pairs, Quota, Side, Swept, Usage
from service.store.retention import DELETE_BATCH_ROWS, SWEEP_BATCH_ROWS
from service.store.rows import DTYPES
from service.store.schema import ROW_BYTES, SCHEMA_VERSION
from service.store.store import Store

__all__ = [
    "DELETE_BATCH_ROWS",
    "DTYPES",
    "REQUEST",
    "RESPONSE",
    "ROW_BYTES",
    "SCHEMA_VERSION",
    "SWEEP_BATCH_ROWS",
    "EventBounds",
    "EventCounts",
    "EventLogged",
    "EventRows",
    "FollowedModelError",
    "LabelSourceError",
    "Logged",
    "Model",
    "Pairs",
    "Quota",
    "QuotaExceededError",
    "RowIdError",
    "RowShapeError",
    "SchemaVersionError",
    "SegmentKeysRemovedError",
    "Side",
    "Store",
    "StoreError",
    "StoreFailureError",
    "StoreFullError",
    "StoreHealth",
    "StoreUnavailableError",
    "Swept",
    "TooManyPendingError",
    "TooManyPendingEventsError",
    "UnknownModelError",
    "Usage",
    "redacted",
]
