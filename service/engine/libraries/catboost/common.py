"""What CatBoost's metrics share: its constants, the `margin` option and the precision they state."""

from __future__ import annotations

from typing import Annotated

from service.engine.options import Doc

TARGET_BORDER = 0.5  # GetDefaultTargetBorder(): Logloss counts a target as positive when target > 0.5
MAE_DELTA = 1e-6  # TQuantileMetric::MaeDelta, and Quantile's default delta
MAX_DELTA = 1e-2  # "Parameter delta for quantile metric should be in interval [0, 0.01]"
# Two-column probabilities are CatBoost's [1 - p, p]: their rows sum to 1 within this.
ROW_SUM_TOLERANCE = 1e-9

Margin = Annotated[
    bool, Doc('predictions are raw formula values (predict(prediction_type="RawFormulaVal")), not predict\'s output')
]
PER_OBJECT = "double per object, from float32 labels and weights; summed in double"
SHAPES = """predictions: (N,); labels: (N,).
per_sample: (N,), each value times its sample's float32 weight."""
