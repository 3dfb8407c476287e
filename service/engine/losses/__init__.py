"""The loss functions, one module per family. Importing this package fills the catalogue."""

from service.engine.losses import crossentropy, distribution, margin, regression, scoring

__all__ = ["crossentropy", "distribution", "margin", "regression", "scoring"]
