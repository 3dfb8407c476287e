"""Python client for loss-service: NumPy in, NumPy out, typed errors, retries, chunking.

    >>> from service.client import LossClient
    >>> with LossClient("http://127.0.0.1:8000") as client:
    ...     result = client.loss("scce", logits, labels, from_logits=True, model="fraud-v3")
    ...     result.per_sample, result.mean

`AsyncLossClient` has the same methods as coroutines. Batches of 4,096 values or more go as an
Arrow stream when every array has one or two axes, as npz otherwise (binary: no JSON parsing on
either side; bench/serving.py measures Arrow fastest); large ones are split into chunks of
`chunk_size` samples, sent in order and reassembled; the mean is recombined exactly from each
chunk's sum and denominator. Requests are retried, with exponential backoff, only when they
cannot have been processed (connection failures) or when the server asks (503 with Retry-After;
507 with Retry-After, its disk full, on logging, configuring and reading calls, which are safe to repeat).
"""

from service.client.bodies import LogResult
from service.client.errors import (
    InsufficientStorageError,
    InvalidInputError,
    LossServiceError,
    NotFoundError,
    OverloadedError,
    ServerError,
    UnauthorizedError,
    UnreachableError,
)
from service.client.http import AsyncLossClient, LossClient
from service.client.logger import PredictionLogger
from service.values.results import LossResult

__all__ = [
    "AsyncLossClient",
    "InsufficientStorageError",
    "InvalidInputError",
    "LogResult",
    "LossClient",
    "LossResult",
    "LossServiceError",
    "NotFoundError",
    "OverloadedError",
    "PredictionLogger",
    "ServerError",
    "UnauthorizedError",
    "UnreachableError",
]
