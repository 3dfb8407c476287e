"""`POST /v1/calibration`: its body (`CalibrationRequest`) and its answer (`CalibrationResult`), whose
numbers `service.engine.calibration` computes and documents."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.engine.calibration import DEFAULT_BINS, MAX_BINS, ROW_SUM_TOLERANCE_PER_CLASS, Strategy
from service.option_models import few_unknown_keys
from service.server.api.arrays import NumericArray


class CalibrationRequest(BaseModel):
    """Predictions and labels of one batch, and how to bin them."""

    # strict: `"bins": 15.0` or `"from_logits": 1` are refused, not coerced.
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _fields_only(cls, data: Any) -> Any:
        return few_unknown_keys(cls, data)

    predictions: NumericArray = Field(
        description="(N,) or (N, 1): the probability of class 1; (N, C), C >= 2: class probabilities, each row "
        f"summing to 1 within {ROW_SUM_TOLERANCE_PER_CLASS:g} per class. Logits with from_logits."
    )
    labels: NumericArray = Field(
        description="0/1 of shape (N,) or (N, 1) for one column; class indices in [0, C) of shape (N,) for C columns."
    )
    from_logits: bool = Field(
        default=False, description="The predictions are logits: sigmoid for one column, softmax over C columns."
    )
    bins: int = Field(default=DEFAULT_BINS, ge=1, le=MAX_BINS, description="Number of bins B.")
    strategy: Strategy = Field(
        default="uniform",
        description="uniform: edges 0, 1/B, ..., 1; quantile: the 0, 1/B, ..., 1 percentiles of the confidences.",
    )


class CalibrationBin(BaseModel):
    lower: float = Field(description="Lower edge; bin 0 includes it, the others do not.")
    upper: float = Field(description="Upper edge, included.")
    confidence: float = Field(description="Mean confidence: p for one column, the top-label probability for C.")
    accuracy: float = Field(description="Fraction of label 1 for one column; of right top labels for C.")
    count: int = Field(description="Samples in the bin (at least 1: empty bins are left out).")


class BrierParts(BaseModel):
    score: float = Field(description="Mean squared error of the probabilities; over C columns, its mean over classes.")
    miscalibration: float = Field(description="score minus the score of the PAV-recalibrated probabilities.")
    discrimination: float = Field(description="uncertainty minus the score of the PAV-recalibrated probabilities.")
    uncertainty: float = Field(description="The score of the base rate: r (1 - r); over C columns, the mean.")


class CalibrationResult(BaseModel):
    ece: float = Field(description="Expected calibration error: sum over bins of count/N |accuracy - confidence|.")
    mce: float = Field(description="Maximum calibration error: the largest |accuracy - confidence| of a bin.")
    bins: list[CalibrationBin] = Field(description="The non-empty bins, in order.")
    brier: BrierParts = Field(
        description="The CORP decomposition: score = miscalibration - discrimination + uncertainty; one-vs-rest and "
        "averaged over the classes for C columns."
    )
