"""A model's configuration as PUT /v1/models/{model} takes it (`model_config_request_model`) and
as the model routes answer it: its losses, segment keys, events, shared labels and champions, its
status and its key's quota."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError

from service.engine import Convention, DType
from service.option_models import (
    FIELDS_ONLY,
    few_unknown_keys,
)
from service.server.api.schemas import CALLS_SEE_CONVENTION, MAX_LOSSES_PER_EVALUATE, _call_union

DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600


MAX_RETENTION_SECONDS = 10 * 365 * 24 * 3600


# Segment keys, as a model's configuration declares them (`segments`).
SEGMENT_KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
MAX_SEGMENT_KEYS = 8
# A tensor's (v2) or an instance field's (v1) name, as `events` names it.
TensorName = Annotated[str, Field(min_length=1, max_length=256)]


class EventsConfig(BaseModel):
    """Where KServe's inference logger puts what the model logs (`POST /v1/models/{model}/events`)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [{"prediction": "probabilities", "id": "ce-id", "segments": {"country": "country"}}]
        },
    )

    @model_validator(mode="before")
    @classmethod
    def _fields_only(cls, data: Any) -> Any:
        return few_unknown_keys(cls, data)

    prediction: TensorName = Field(
        description="The response's prediction: the name of a v2 output (`outputs[].name`), or of the v1 response's "
        'field (`"predictions"`). Its first axis is the batch: row r of it is prediction r.'
    )
    id: TensorName = Field(
        default="ce-id",
        description='`"ce-id"`: row r of an inference is the prediction `<Ce-Id>:<r>`. Otherwise the name of a v2 '
        "request input (one id per row; BYTES or integers), of a v2 request parameter (`<value>:<r>`), or of a "
        "field of each v1 instance (one id per row).",
    )
    segments: dict[Annotated[str, Field(pattern=SEGMENT_KEY_PATTERN)], TensorName] = Field(
        default_factory=dict,
        max_length=MAX_SEGMENT_KEYS,
        description="Segment key -> the v2 request input (or v1 instance field) that holds its value, one per row: a "
        "string, an integer (as its decimal text) or null.",
    )


DEFAULT_ESTIMATE_WINDOW = 10_000
MIN_ESTIMATE_WINDOW = 10
MAX_ESTIMATE_WINDOW = 1_000_000


class EstimateConfig(BaseModel):
    """How the model's losses are estimated before their labels arrive (docs/estimates.md)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"calibration": "temperature", "window": 10000}]},
    )

    @model_validator(mode="before")
    @classmethod
    def _fields_only(cls, data: Any) -> Any:
        return few_unknown_keys(cls, data)

    calibration: Literal["none", "temperature", "isotonic"] = Field(
        default="none",
        description="The belief about each label: the prediction's own distribution (`none`), or it recalibrated "
        "on the model's most recent `window` joined pairs by temperature scaling (logits or several classes) or "
        "isotonic regression (one binary column). A fit needs `keep_pairs`.",
    )
    window: int = Field(
        default=DEFAULT_ESTIMATE_WINDOW,
        ge=MIN_ESTIMATE_WINDOW,
        le=MAX_ESTIMATE_WINDOW,
        description="The joined pairs a calibration is fitted on: the model's most recent ones.",
    )
    losses: list[Annotated[int, Field(ge=0)]] | None = Field(
        default=None,
        max_length=MAX_LOSSES_PER_EVALUATE,
        description="Positions in `losses` of the losses to estimate; default every configured loss. Each must have "
        "an expected loss (the catalogue's `expected`).",
    )


@cache
def model_config_request_model() -> type[BaseModel]:
    """The body of PUT /v1/models/{model}: the losses to compute when pairs join, as /v1/evaluate takes them."""
    call: Any = _call_union()
    return create_model(
        "ModelConfigRequest",
        __config__=ConfigDict(extra="forbid", strict=True),
        __validators__={**FIELDS_ONLY, **CALLS_SEE_CONVENTION},
        losses=(
            list[call],
            Field(min_length=1, max_length=MAX_LOSSES_PER_EVALUATE, description="The losses to compute per join."),
        ),
        convention=(Convention, Field(default="keras", description="Whose numerics to reproduce.")),
        dtype=(DType, Field(default="float64", description="Working precision; also the precision rows are kept in.")),
        retention_seconds=(
            float,
            Field(
                default=DEFAULT_RETENTION_SECONDS,
                gt=0,
                le=MAX_RETENTION_SECONDS,
                description="How long a row waits for its other half (and a joined id is remembered).",
            ),
        ),
        segments=(SegmentKeys, Field(default=[], description=SEGMENTS_DESCRIPTION)),
        keep_pairs=(bool, Field(default=False, description=KEEP_PAIRS_DESCRIPTION)),
        events=(
            EventsConfig | None,
            Field(default=None, description="Where KServe's inference logger events hold the predictions."),
        ),
        labels_from=(ModelNameField | None, Field(default=None, description=LABELS_FROM_DESCRIPTION)),
        compare_to=(CompareTo, Field(default=[], description=COMPARE_TO_DESCRIPTION)),
        estimate=(EstimateConfig | None, Field(default=None, description=ESTIMATE_DESCRIPTION)),
    )


ESTIMATE_DESCRIPTION = (
    "Estimate the losses before their labels arrive: each bucket of the history gains `estimated` (the mean "
    "expected loss of its predictions, a 3-sigma band, and the mean over those still pending)."
)


LABELS_FROM_DESCRIPTION = (
    "Another model whose logged labels serve this one too (same ids): each label logged for it is copied to this "
    "model in the same transaction, and joins here exactly once. Labels are then logged for that model only; it "
    "cannot itself take its labels from another, nor be deleted while this one follows it."
)
COMPARE_TO_DESCRIPTION = (
    "Champions this model (the challenger) is compared with in /metrics (loss_service_comparison_*), over the "
    "last 24 h of ids both joined, on each loss both configure identically (at most 8 models, distinct)."
)


SEGMENTS_DESCRIPTION = (
    "Segment keys the predictions may carry values of (at most 8, distinct, each [A-Za-z_][A-Za-z0-9_]{0,63}); "
    "history is kept per value of each. A re-PUT may add keys, never remove one."
)
KEEP_PAIRS_DESCRIPTION = "Keep the prediction and label rows of joined pairs (not only their losses) until retention."


def _distinct(kind: str, what: str, field: str) -> Callable[[list[str]], list[str]]:
    """A validator refusing a list that repeats an item, naming where it first came."""

    def check(items: list[str]) -> list[str]:
        seen: dict[str, int] = {}
        for index, item in enumerate(items):
            if item in seen:
                message = f"repeats the {what} at {field}[{{first}}]"
                raise PydanticCustomError(kind, message, {"first": seen[item], "index": [index]})
            seen[item] = index
        return items

    return check


ModelNameField = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]


CompareTo = Annotated[
    list[ModelNameField], Field(max_length=8), AfterValidator(_distinct("compare_to", "model", "compare_to"))
]


SegmentKeys = Annotated[
    list[Annotated[str, StringConstraints(pattern=SEGMENT_KEY_PATTERN)]],
    Field(max_length=MAX_SEGMENT_KEYS),
    AfterValidator(_distinct("segment_keys", "segment key", "segments")),
]


class ConfiguredLoss(BaseModel):
    loss: str = Field(description="The catalogue name; under a library convention the metric as given.")
    options: dict[str, Any] = Field(description="The options given; the others take their defaults.")


class ModelConfig(BaseModel):
    model: str
    losses: list[ConfiguredLoss]
    convention: Convention
    dtype: DType
    retention_seconds: float
    segments: list[str] = Field(description=SEGMENTS_DESCRIPTION)
    keep_pairs: bool = Field(description=KEEP_PAIRS_DESCRIPTION)
    created_at: float = Field(description="Unix seconds.")
    updated_at: float = Field(description="Unix seconds of the last PUT.")
    events: EventsConfig | None = Field(default=None, description="Present when configured.")
    labels_from: str | None = Field(default=None, description=LABELS_FROM_DESCRIPTION)
    compare_to: list[str] = Field(default=[], description=COMPARE_TO_DESCRIPTION)
    estimate: EstimateConfig | None = Field(default=None, description=ESTIMATE_DESCRIPTION)


class QuotaUsage(BaseModel):
    used: int = Field(description="What the models the key's patterns match hold.")
    limit: int = Field(description="The key's quota: its key-file field, else the LOSS_SERVICE_QUOTA_* setting.")


class RowValuesQuota(BaseModel):
    limit: int = Field(description="Most values in one logged prediction or label row.")


class QuotaStatus(BaseModel):
    key: str | None = Field(description="The API key's name; null on a service without keys.")
    models: QuotaUsage = Field(description="Models (max_models, LOSS_SERVICE_QUOTA_MODELS).")
    stored_bytes: QuotaUsage = Field(
        description="Stored bytes over those models (max_stored_bytes, LOSS_SERVICE_QUOTA_STORED_BYTES)."
    )
    row_values: RowValuesQuota = Field(description="max_row_values, LOSS_SERVICE_QUOTA_ROW_VALUES.")


class TemperatureFit(BaseModel):
    method: Literal["temperature"]
    temperature: float = Field(description="T: the belief is softmax(z / T), sigmoid(z / T) for one binary column.")
    at_bound: bool = Field(description="The optimum lies beyond [0.01, 100]; T is that bound.")


class IsotonicFit(BaseModel):
    method: Literal["isotonic"]
    x: list[float] = Field(description="The thresholds of P(class 1), strictly rising.")
    y: list[float] = Field(description="The belief at each threshold, non-decreasing in [0, 1]; linear between.")
    thinned: bool = Field(description="More thresholds were fitted than are kept (1000): evenly spaced ones kept.")


class FitWindow(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: float | None = Field(alias="from", description="The earliest prediction time among the pairs (Unix s).")
    to: float | None = Field(description="The latest prediction time among the pairs (Unix s).")


class EstimateFit(BaseModel):
    calibration: Literal["temperature", "isotonic"] = Field(description="The calibration fitted.")
    parameters: Annotated[TemperatureFit | IsotonicFit, Field(discriminator="method")] | None = Field(
        description="The fit; null where the pairs could not be fitted (`error` says why): the estimates then "
        "use the predictions' own distribution."
    )
    error: str | None = Field(description="Why the pairs could not be fitted (the field and index, and the reason).")
    pairs: int = Field(description="The joined pairs fitted on: the most recent ones, at most `estimate.window`.")
    window: FitWindow = Field(description="Their prediction times.")
    fitted_at: float = Field(description="Unix seconds of the fit.")
    joined: int = Field(
        description="The model's `joined` when the pairs were read; a refit follows 10 % of the window later."
    )
    configured_at: float = Field(description="The `updated_at` of the configuration fitted under.")


class ModelStatus(ModelConfig):
    pending_predictions: int = Field(description="Predictions waiting for their label.")
    pending_labels: int = Field(description="Labels waiting for their prediction.")
    joined: int = Field(description="Pairs joined and recorded.")
    expired_predictions: int = Field(description="Predictions removed by retention before a label came.")
    expired_labels: int = Field(description="Labels removed by retention before their prediction came.")
    oldest_pending_seconds: float | None = Field(description="Age of the oldest row still waiting; null if none.")
    prediction_shape: list[int] | None = Field(description="Per-row shape fixed by the first predictions.")
    label_shape: list[int] | None = Field(description="Per-row shape fixed by the first labels.")
    stored_bytes: int = Field(
        description="What the model's rows count towards quotas: per row kept, 64 bytes plus its id's and (while "
        "it waits, or with keep_pairs) its values' bytes; a prediction row also its segments' and its losses' "
        "bytes (32 per configured loss once joined, and 48 per estimated loss)."
    )
    estimate_fit: EstimateFit | None = Field(
        default=None,
        description="The calibration the estimates use (with `estimate` and a calibration other than none): its "
        "parameters, the pairs it was fitted on and when; null before the first fit (docs/estimates.md).",
    )
    quota: QuotaStatus = Field(description="The requesting API key's quotas and its usage of them.")


class ModelList(BaseModel):
    models: list[ModelConfig]
