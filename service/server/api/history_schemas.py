"""A model's history as `GET /v1/models/{model}/history` answers it (`History`): time buckets, each
with its predictions, joined pairs, coverage, label delay and losses."""

from __future__ import annotations

from pydantic import BaseModel, Field

from service.server.api.calibration_schemas import CalibrationResult


class LabelDelay(BaseModel):
    p50: float | None = Field(description="Median seconds from prediction to label, over the joined pairs (1 %).")
    p90: float | None = Field(description="90th percentile of the same (1 % relative error).")


class EstimatedLoss(BaseModel):
    mean: float | None = Field(
        description="The mean expected loss of the bucket's predictions (joined pairs as estimated when they "
        "joined, pending ones under the model's current calibration); the realized `mean` beside it is that of "
        "the joined pairs."
    )
    low: float | None = Field(description="mean - 3 sigma, sigma from the predictions' summed variances.")
    high: float | None = Field(description="mean + 3 sigma.")
    pending_mean: float | None = Field(
        description="The mean expected loss of the predictions still pending; null if none."
    )
    predictions: int = Field(description="The predictions estimated (pairs joined before `estimate` was set are not).")
    pending: int = Field(description="Of them, still pending.")


class HistoryLoss(BaseModel):
    mean: float | None = Field(
        description="What /v1/loss returns for the bucket's joined pairs under the model's configuration; null "
        "where none counts (no joined pair, or every target ignored or weighted 0)."
    )
    sum: float = Field(description="The sum of the pairs' shares of the loss's sum.")
    denominator: float = Field(description="The sum of the pairs' shares of the denominator the mean divides by.")
    count: int = Field(description="Values the pairs' per_sample holds, as /v1/loss counts them.")
    p50: float | None = Field(description="Median of each joined pair's own loss (1 % relative error).")
    p90: float | None = Field(description="90th percentile of each joined pair's own loss.")
    p99: float | None = Field(description="99th percentile of each joined pair's own loss.")
    estimated: EstimatedLoss | None = Field(
        default=None,
        description="With the model's `estimate`: the loss expected before the labels (docs/estimates.md); null for "
        "a loss not estimated or a bucket with no prediction estimated. Absent otherwise.",
    )


class BucketCalibration(CalibrationResult):
    pairs: int = Field(
        description="The joined pairs calibrated: those with their stored prediction and label. joined - pairs "
        'were joined before the model was configured with "keep_pairs": true and are left out.'
    )


class HistoryBucket(BaseModel):
    start: float = Field(description="Unix seconds: the bucket holds predictions made in [start, start + step).")
    segment: str | None = Field(
        default=None, description="With `by`: the segment value (null: predictions without one). Absent otherwise."
    )
    predictions: int = Field(description="Predictions made in the bucket.")
    joined: int = Field(description="Of them, joined with their label.")
    pending: int = Field(description="Still waiting for their label.")
    expired: int = Field(description="Removed by retention before their label came.")
    coverage: float = Field(description="joined / predictions.")
    label_delay: LabelDelay
    losses: list[HistoryLoss] = Field(description="One per configured loss, in the order of `losses`.")
    calibration: BucketCalibration | None = Field(
        default=None,
        description="With calibration=true: what POST /v1/calibration answers for the bucket's joined pairs with "
        "their stored payloads, and how many they are; null where there is none. Absent otherwise.",
    )


class History(BaseModel):
    model: str
    start: float = Field(description="Unix seconds.")
    end: float = Field(description="Unix seconds; the last bucket may reach past it (buckets are whole steps).")
    step: float = Field(description="Bucket width in seconds.")
    by: str | None = Field(description="The segment key the buckets are split by, or null.")
    losses: list[str] = Field(description="The configured losses, by the names their results carry.")
    exact: list[bool] = Field(
        description="Per loss: whether a bucket's mean is exactly what /v1/loss returns for its pairs (false for "
        "losses whose samples read their batch: circle, log loss and Brier score without options.classes; and "
        "LightGBM's cross_entropy metrics, whose weights LightGBM sums in float32)."
    )
    buckets: list[HistoryBucket] = Field(description="Time buckets (and segment values) holding predictions.")
