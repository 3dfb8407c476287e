"""`service.datasets`, the documented import path of the offline room's dataset evaluation."""

from service.offline.cluster import evaluate_dask, per_sample_dask
from service.offline.datasets import DEFAULT_BATCH_ROWS, evaluate_dataset
from service.offline.spec import DEFAULT_MAX_GROUPS, DatasetError, DatasetResult, Spec

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
