"""The loss functions, one module per family. Importing this package fills the catalogue."""

from service.engine.losses import crossentropy, deviance, distribution, margin, regression, scoring

__all__ = ["crossentropy", "deviance", "distribution", "margin", "regression", "scoring"]
