"""The loss functions, one module per family. Importing this package fills the catalogue."""

from service.engine.losses import crossentropy, crps, distribution, margin, regression, scoring

__all__ = ["crossentropy", "crps", "distribution", "margin", "regression", "scoring"]
