"""The loss functions, one module per family. Importing this package fills the catalogue."""

# The catalogue lists the losses in the order they are declared: the losses of class targets
# (cross-entropy, then generalized cross-entropy and nll), the focal family that grew from them,
# then the others in alphabetical order.
# isort: off
from service.engine.losses import crossentropy
from service.engine.losses import class_targets
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
    "class_targets",
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
