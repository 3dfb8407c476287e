"""The loss functions, one module per family. Importing this package fills the catalogue."""

from service.engine.losses import (
    crossentropy,
    crps,
    ctc,
    deviance,
    distribution,
    margin,
    metric_learning,
    overlap,
    regression,
    scoring,
)

__all__ = [
    "crossentropy",
    "crps",
    "ctc",
    "deviance",
    "distribution",
    "margin",
    "metric_learning",
    "overlap",
    "regression",
    "scoring",
]
