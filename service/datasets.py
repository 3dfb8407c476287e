"""`service.datasets`, the documented import path of `service.offline.datasets`."""

from service.offline.datasets import (
    DEFAULT_BATCH_ROWS,
    DEFAULT_MAX_GROUPS,
    DatasetError,
    DatasetResult,
    Spec,
    evaluate_dask,
    evaluate_dataset,
    per_sample_dask,
)

__all__ = [
    "DEFAULT_BATCH_ROWS",
    "DEFAULT_MAX_GROUPS",
    "DatasetError",
    "DatasetResult",
    "Spec",
    "evaluate_dask",
    "evaluate_dataset",
    "per_sample_dask",
]
