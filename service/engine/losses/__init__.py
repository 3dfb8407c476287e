"""The loss functions, one module per family. Importing this package fills the catalogue."""

# The catalogue lists the losses in the order they are declared: the focal family follows the
# cross-entropy family it grew from, before the others in alphabetical order.
# isort: off
from service.engine.losses import crossentropy
from service.engine.losses import focal
from service.engine.losses import (
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
# isort: on

__all__ = [
    "crossentropy",
    "crps",
    "ctc",
    "deviance",
    "distribution",
    "focal",
    "margin",
    "metric_learning",
    "overlap",
    "regression",
    "scoring",
]
