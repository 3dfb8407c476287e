"""The loss functions. Importing this package fills the catalogue."""

from service.engine.losses import crossentropy, regression

__all__ = ["crossentropy", "regression"]
