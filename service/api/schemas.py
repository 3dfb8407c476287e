"""Request and response models. Each loss's options model is generated from its engine signature."""

from __future__ import annotations

import re
import typing
from collections.abc import Callable
from contextvars import ContextVar
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    TypeAdapter,
    create_model,
    model_validator,
)
from pydantic.functional_validators import PlainValidator
from pydantic.json_schema import WithJsonSchema
from pydantic_core import PydanticCustomError

from service.api.arrays import NumericArray, kind_of
from service.api.problems import shown
from service.engine import FRAMEWORKS, LIBRARIES, Aggregate, Convention, DType, LossSpec, catalogue
from service.engine.conventions import Framework
from service.engine.libraries import LIBRARY_TITLES, SEPARATORS, LibraryMetric, base_name, canonical, metrics
from service.option_models import (
    FIELDS_ONLY,
    few_unknown_keys,
    library_options_model,
    metric_title,
    options_model,
    title,
)
from service.option_models import UNKNOWN_KEYS as UNKNOWN_KEYS  # the error handler names them
from service.usecases.ingest import MAX_SEGMENT_KEYS, SEGMENT_KEY_PATTERN

MODEL_LABEL_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
MAX_LOSSES_PER_EVALUATE = 32


class Batch(BaseModel):
    """The arrays and settings shared by /v1/loss and /v1/evaluate."""

    # strict: `"chunk": 0` or `"dtype": 1` are refused, not coerced.
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _fields_only(cls, data: Any) -> Any:
        return few_unknown_keys(cls, data)

    predictions: NumericArray = Field(description="Model outputs: probabilities, logits or values, one row per sample.")
    labels: NumericArray = Field(description="Targets: class indices, one-hot/soft vectors or values, per the loss.")
    sample_weight: NumericArray | None = Field(
        default=None, description="Optional weight >= 0 per sample (N,), or one per per-sample value."
    )
    dtype: DType = Field(
        default="float64", description="Working precision; float32 reproduces the frameworks' float32 numbers."
    )
    convention: Convention = Field(
        default="keras",
        description="Whose numerics to reproduce: keras or torch for the catalogue losses; xgboost, lightgbm or "
        "catboost for that library's evaluation metrics, named as the library names them.",
    )
    chunk: bool = Field(
        default=False,
        description="This batch is one chunk of a larger one (the bundled client sets it): a chunk whose "
        "targets are all ignored or weighted 0 answers mean 0 with denominator 0 instead of a 422.",
    )
    model: Annotated[str, Field(pattern=MODEL_LABEL_PATTERN)] | None = Field(
        default=None, description="Label under which monitoring records this batch (1-64 of A-Z a-z 0-9 _ . : -)."
    )


class LossResult(BaseModel):
    loss: str = Field(
        description="The catalogue name of the loss (aliases are resolved); under a library convention the metric "
        "as the library names it (XGBoost's error@0.7, the key of evals_result())."
    )
    per_sample: list[Any] = Field(
        description="The framework's unreduced loss, sample weights applied; nested for multi-axis outputs."
    )
    mean: float = Field(
        description="The convention's default reduction: Keras sum_over_batch_size, PyTorch 'mean', the libraries' "
        "sum(w l) / sum(w); with aggregate root_mean its square root, with aggregate sum the weighted sum "
        "itself (LightGBM's gamma_deviance)."
    )
    sum: float = Field(
        description="Sum of per_sample; for CTC under torch, of each sample's loss divided by its target length "
        "(what PyTorch's mean averages)."
    )
    count: int = Field(description="Number of values in per_sample.")
    denominator: float = Field(
        description="What `mean` divides `sum` by: the number of values, of non-ignored targets, or the summed "
        "weights (PyTorch, the libraries); reported but unused with aggregate sum. Chunks of one batch combine "
        "as sum(sums) / sum(denominators), its square root with aggregate root_mean, sum(sums) with aggregate sum."
    )
    aggregate: Aggregate = Field(
        default="mean",
        description="How mean follows from sum and denominator: mean = sum / denominator, or root_mean: "
        "mean = sqrt(sum / denominator) (RMSE-type library metrics, whose per_sample are weighted squared errors), "
        "or sum: mean = sum (a library metric that is a weighted sum: LightGBM's gamma_deviance).",
    )
    dtype: DType
    convention: Convention

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "loss": "sparse_categorical_crossentropy",
                    "per_sample": [0.0512932943875505, 2.302585092994045],
                    "mean": 1.176939193690798,
                    "sum": 2.353878387381596,
                    "count": 2,
                    "denominator": 2.0,
                    "aggregate": "mean",
                    "dtype": "float64",
                    "convention": "keras",
                }
            ]
        }
    )


class EvaluateResult(BaseModel):
    results: list[LossResult]


class OptionInfo(BaseModel):
    name: str
    type: str
    default: Any
    description: str
    range: str | None = None
    only_under: Convention | None = None
    aliases: list[str] = []


class LibraryMetricRef(BaseModel):
    convention: Convention = Field(description="The library convention.")
    metric: str = Field(description="The metric as the library names it.")
    summary: str


class LossInfo(BaseModel):
    name: str
    aliases: list[str]
    summary: str
    formula: str
    shapes: str
    follows: str
    conventions: list[Convention]
    options: list[OptionInfo]
    library_metrics: list[LibraryMetricRef] = Field(
        default=[], description="Library metrics computed by this loss's formula with the library's constants."
    )


class Catalogue(BaseModel):
    losses: list[LossInfo]


class LibraryMetricInfo(BaseModel):
    convention: Convention
    metric: str = Field(description="The name as the library writes it; `name@value` sets `parameter`.")
    parameter: str | None = Field(description="The option that name@value sets.")
    loss: str | None = Field(description="The catalogue loss whose formula it is, with the library's constants.")
    aggregate: Aggregate
    link: str = Field(description="What the option margin=true applies to the predictions first.")
    precision: str = Field(description="The precision the library computes each value and the sums in.")
    summary: str
    formula: str
    shapes: str
    follows: str
    options: list[OptionInfo]


class LibraryCatalogue(BaseModel):
    convention: Convention
    metrics: list[LibraryMetricInfo]


class ProblemItem(BaseModel):
    loc: list[str | int]
    msg: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[ProblemItem] | None = None


def _option_infos(spec: LossSpec) -> list[OptionInfo]:
    return [
        OptionInfo(
            name=o.name,
            type=o.type_name(),
            default=o.default,
            description=o.doc,
            range=o.range.describe() if o.range else None,
            only_under=o.only_under,
            aliases=list(o.aliases),
        )
        for o in spec.options
    ]


def loss_info(spec: LossSpec) -> LossInfo:
    return LossInfo(
        name=spec.name,
        aliases=list(spec.aliases),
        summary=spec.summary,
        formula=spec.formula,
        shapes=spec.shapes,
        follows=spec.follows,
        conventions=list(FRAMEWORKS),
        options=_option_infos(spec),
        library_metrics=[
            LibraryMetricRef(convention=m.library, metric=m.name, summary=m.spec.summary)
            for m in metrics()
            if m.loss == spec.name
        ],
    )


def library_metric_info(metric: LibraryMetric) -> LibraryMetricInfo:
    return LibraryMetricInfo(
        convention=metric.library,
        metric=metric.name,
        parameter=metric.parameter,
        loss=metric.loss,
        aggregate=metric.aggregate,
        link=metric.link,
        precision=metric.precision,
        summary=metric.spec.summary,
        formula=metric.spec.formula,
        shapes=metric.spec.shapes,
        follows=metric.spec.follows,
        options=_option_infos(metric.spec),
    )


def _loss_field(spec: LossSpec) -> tuple[Any, Any]:
    names = (spec.name, *spec.aliases)
    return Literal[names], Field(description=f"{spec.summary} Also accepted: {', '.join(spec.aliases) or 'no alias'}.")


@cache
def loss_call_model(spec: LossSpec) -> type[BaseModel]:
    """`{"loss": ..., "options": {...}}` for one loss: an item of /v1/evaluate's `losses`."""
    options = options_model(spec)
    return create_model(
        f"{title(spec.name)}Call",
        __config__=ConfigDict(extra="forbid"),
        __validators__=FIELDS_ONLY,
        loss=_loss_field(spec),
        options=(options, Field(default_factory=options)),
    )


@cache
def loss_request_model(spec: LossSpec) -> type[BaseModel]:
    """The whole /v1/loss body for one loss."""
    options = options_model(spec)
    return create_model(
        f"{title(spec.name)}Request",
        __base__=Batch,
        loss=_loss_field(spec),
        convention=(
            Framework,
            Field(default="keras", description="Whose numerics to reproduce where Keras and PyTorch differ."),
        ),
        options=(options, Field(default_factory=options)),
    )


# -- library metrics: one branch per metric, tagged "<convention>:<name>" -------------------------


def library_tag(convention: str, loss: str) -> str:
    """The branch of a library metric: "<convention>:<name>" without its parameters, an alias
    (LightGBM's mse) by its name (l2)."""
    if convention in LIBRARIES:
        return f"{convention}:{canonical(convention, loss)}"
    return f"{convention}:{base_name(loss)}"


def _metric_loss_field(metric: LibraryMetric) -> tuple[Any, Any]:
    number = r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,3})?"
    # Optional even where the library requires it: the engine's refusal says how to write it.
    suffix = "" if metric.parameter is None else f"(@{number})?"
    if metric.parameter is not None and SEPARATORS[metric.library] == ":":
        suffix = "(:.{1,256})?"  # Name:key=value;key=value; the engine's refusal names what is wrong
    names = "|".join(re.escape(n) for n in (metric.name, *metric.aliases))
    pattern = f"^({names}){suffix}$" if metric.aliases else f"^{re.escape(metric.name)}{suffix}$"
    also = f" Also accepted: {', '.join(metric.aliases)}." if metric.aliases else ""
    return str, Field(
        pattern=pattern, description=f"{metric.spec.summary} Written {' or '.join(metric.forms())}.{also}"
    )


@cache
def library_call_model(metric: LibraryMetric) -> type[BaseModel]:
    options = library_options_model(metric)
    return create_model(
        f"{metric_title(metric)}Call",
        __config__=ConfigDict(extra="forbid"),
        __validators__=FIELDS_ONLY,
        loss=_metric_loss_field(metric),
        options=(options, Field(default_factory=options)),
    )


@cache
def library_request_model(metric: LibraryMetric) -> type[BaseModel]:
    options = library_options_model(metric)
    convention: Any = Literal[metric.library]
    return create_model(
        f"{metric_title(metric)}Request",
        __base__=Batch,
        loss=_metric_loss_field(metric),
        convention=(convention, Field(description=f"{LIBRARY_TITLES[metric.library]}'s numerics.")),
        options=(options, Field(default_factory=options)),
    )


@cache
def _catalogue_tags() -> dict[str, str]:
    return {name: spec.name for spec in catalogue() for name in (spec.name, *spec.aliases)}


# The convention of the request whose `losses` are being validated (a call has none of its own).
_CALL_CONVENTION: ContextVar[Any] = ContextVar("call_convention", default=None)


def _tag(loss: Any, convention: Any) -> str | None:
    if loss is None:
        return None
    text = loss if isinstance(loss, str) else repr(loss)
    if isinstance(convention, str) and convention in LIBRARIES:
        return library_tag(convention, text)
    return _catalogue_tags().get(text, text)


def _request_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        return _tag(value.get("loss"), value.get("convention"))
    return _tag(getattr(value, "loss", None), getattr(value, "convention", None))


def _call_tag(value: Any) -> str | None:
    loss = value.get("loss") if isinstance(value, dict) else getattr(value, "loss", None)
    return _tag(loss, _CALL_CONVENTION.get())


def _union(catalogue_models: list[type[BaseModel]], library_models: list[tuple[str, type[BaseModel]]], tag: Any) -> Any:
    members = [Annotated[m, Tag(s.name)] for m, s in zip(catalogue_models, catalogue(), strict=True)]
    members += [Annotated[m, Tag(name)] for name, m in library_models]
    return Annotated[typing.Union[tuple(members)], Discriminator(tag)]  # noqa: UP007


@cache
def loss_request_adapter() -> TypeAdapter[Any]:
    return TypeAdapter(
        _union(
            [loss_request_model(s) for s in catalogue()],
            [(library_tag(m.library, m.name), library_request_model(m)) for m in metrics()],
            _request_tag,
        )
    )


def _call_union() -> Any:
    return _union(
        [loss_call_model(s) for s in catalogue()],
        [(library_tag(m.library, m.name), library_call_model(m)) for m in metrics()],
        _call_tag,
    )


def _with_convention(cls: type[BaseModel], data: Any, handler: Callable[[Any], Any]) -> Any:
    """Validate with the request's convention visible to its calls' discriminator (`_call_tag`)."""
    token = _CALL_CONVENTION.set(data.get("convention", "keras") if isinstance(data, dict) else None)
    try:
        return handler(data)
    finally:
        _CALL_CONVENTION.reset(token)


CALLS_SEE_CONVENTION: dict[str, Any] = {"_calls_see_convention": model_validator(mode="wrap")(_with_convention)}


@cache
def evaluate_request_model() -> type[BaseModel]:
    call: Any = _call_union()
    return create_model(
        "EvaluateRequest",
        __base__=Batch,
        __validators__=CALLS_SEE_CONVENTION,
        losses=(
            list[call],
            Field(min_length=1, max_length=MAX_LOSSES_PER_EVALUATE, description="The losses to compute."),
        ),
    )


def loss_names() -> set[str]:
    """Every tag of the loss unions: catalogue names and aliases, and "<convention>:<metric>"."""
    names = {name for spec in catalogue() for name in (spec.name, *spec.aliases)}
    return names | {library_tag(m.library, m.name) for m in metrics()}


# -- delayed labels: models, and the predictions and labels logged for them ----------------------

MAX_ID_LENGTH = 128
DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600
MAX_RETENTION_SECONDS = 10 * 365 * 24 * 3600


# Characters no id may hold: Unicode's control characters (general category Cc: C0 U+0000-U+001F,
# DEL U+007F, C1 U+0080-U+009F), which SQLite's JSON functions cut strings at (U+0000), PostgreSQL
# refuses in text (U+0000), and logs and terminals act upon; and lone surrogates (U+D800-U+DFFF),
# which are no characters and cannot be encoded (both JSON parsers already refuse them as malformed).
_REFUSED_IN_IDS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# The same for the OpenAPI document (JSON strings hold no lone surrogates).
ID_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"
# Those of them that are ASCII (C0 and DEL), for `bytes.translate`.
_ASCII_CONTROLS = bytes(range(0x20)) + b"\x7f"


def _id_error(message: str, index: int) -> PydanticCustomError:
    return PydanticCustomError("row_id", message, {"index": [index]})


def _holds_refused(text: str) -> bool:
    """Whether `text` holds a character no id may hold. ASCII text (whose flag CPython keeps, so
    `isascii` is O(1)) is checked by `bytes.translate`, ~0.5 ns a character; other text by the
    regex, ~3 ns a character."""
    if text.isascii():
        data = text.encode("ascii")
        return len(data.translate(None, _ASCII_CONTROLS)) != len(data)
    return _REFUSED_IN_IDS.search(text) is not None


def _refused_character(text: str) -> str | None:
    """Why `text` cannot be an id because of a character it holds, or None."""
    found = _REFUSED_IN_IDS.search(text)
    if found is None:
        return None
    code = ord(found.group())
    if 0xD800 <= code <= 0xDFFF:
        return f"id contains the lone surrogate U+{code:04X}, which is no character"
    return f"id contains the control character U+{code:04X} (no id holds U+0000-U+001F or U+007F-U+009F)"


def to_ids(value: Any) -> list[str]:
    """Row ids as strings: a string of 1-128 characters, or a non-negative integer (7 is the id "7").
    An id repeated within one request is refused at its second occurrence, and so is a string
    holding a control character or a lone surrogate (`_REFUSED_IN_IDS`), at its index."""
    if not isinstance(value, list):
        raise PydanticCustomError("row_ids", "expected an array of ids, got {kind}", {"kind": kind_of(value)})
    if not value:
        raise PydanticCustomError("row_ids", "expected at least one id", {"index": []})
    # The common cases in one pass each: all strings, or all non-negative integers, none repeated.
    if all(type(item) is str and 0 < len(item) <= MAX_ID_LENGTH for item in value):
        # One pass over all of them; the slow path
        # names the index of a refused one.
        texts: list[str] = [] if _holds_refused("".join(value)) else value
    elif all(type(item) is int and item >= 0 for item in value):
        texts = [str(item) for item in value]
    else:
        texts = []
    if texts and len(set(texts)) == len(texts) and all(len(text) <= MAX_ID_LENGTH for text in texts):
        return texts
    ids: list[str] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(value):
        if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
            text = str(item)
        elif isinstance(item, str):
            text = item
        else:
            raise _id_error(
                f"an id is a string of 1-{MAX_ID_LENGTH} characters or a non-negative integer, got "
                + (shown(item) if isinstance(item, int | float) and not isinstance(item, bool) else kind_of(item)),
                index,
            )
        if not 1 <= len(text) <= MAX_ID_LENGTH:
            raise _id_error(f"an id has 1 to {MAX_ID_LENGTH} characters, this one {len(text):,}", index)
        refused = _refused_character(text)
        if refused is not None:
            raise _id_error(refused, index)
        if text in seen:
            raise _id_error(f"repeats the id at ids[{seen[text]}] ({shown(text)}); each id once per request", index)
        seen[text] = index
        ids.append(text)
    return ids


RowIds = Annotated[
    list[str],
    PlainValidator(to_ids),
    WithJsonSchema(
        {
            "type": "array",
            "minItems": 1,
            "items": {
                "anyOf": [
                    {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH, "pattern": ID_PATTERN},
                    {"type": "integer", "minimum": 0},
                ]
            },
            "description": "One id per row, each once: a string of 1-128 characters or a non-negative integer "
            '(the integer 7 is the id "7"). A string id holds no control characters (U+0000-U+001F, '
            "U+007F-U+009F).",
        },
        mode="validation",
    ),
]


class PredictionsLog(BaseModel):
    """Predictions to keep until their labels arrive."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _fields_only(cls, data: Any) -> Any:
        return few_unknown_keys(cls, data)

    ids: RowIds
    predictions: NumericArray = Field(description="One row per id; the model's first predictions fix the row shape.")
    timestamps: NumericArray | None = Field(
        default=None, description="When each prediction was made (Unix seconds); default: its arrival."
    )
    segments: dict[str, list[str | None]] | None = Field(
        default=None,
        description="Per segment key the model declares, one value per row: a string of 1-64 printable "
        "characters, or null. A declared key left out is null for every row.",
        examples=[{"country": ["BR", None]}],
    )


class LabelsLog(BaseModel):
    """Labels for predictions logged before or after them."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _fields_only(cls, data: Any) -> Any:
        return few_unknown_keys(cls, data)

    ids: RowIds
    labels: NumericArray = Field(description="One label row per id; the model's first labels fix the row shape.")
    sample_weight: NumericArray | None = Field(
        default=None, description="One weight >= 0 per label; a label without one counts with weight 1."
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
    )


SEGMENTS_DESCRIPTION = (
    "Segment keys the predictions may carry values of (at most 8, distinct, each [A-Za-z_][A-Za-z0-9_]{0,63}); "
    "history is kept per value of each. A re-PUT may add keys, never remove one."
)
KEEP_PAIRS_DESCRIPTION = "Keep the prediction and label rows of joined pairs (not only their losses) until retention."


def _distinct_keys(keys: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    for index, key in enumerate(keys):
        if key in seen:
            raise PydanticCustomError(
                "segment_keys", "repeats the segment key at segments[{first}]", {"first": seen[key], "index": [index]}
            )
        seen[key] = index
    return keys


SegmentKeys = Annotated[
    list[Annotated[str, StringConstraints(pattern=SEGMENT_KEY_PATTERN)]],
    Field(max_length=MAX_SEGMENT_KEYS),
    AfterValidator(_distinct_keys),
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
        "bytes (32 per configured loss once joined)."
    )
    quota: QuotaStatus = Field(description="The requesting API key's quotas and its usage of them.")


class ModelList(BaseModel):
    models: list[ModelConfig]


class LogResult(BaseModel):
    accepted: int = Field(description="Rows stored by this request.")
    duplicates: int = Field(description="Rows whose id this side already had: counted, never stored again.")
    duplicate_ids: list[str] = Field(description="The first 100 of them.")
    joined: int = Field(description="Pairs this request completed.")
    joined_ids: list[str] = Field(description="Their ids, in request order; `per_sample` follows this order.")
    results: list[LossResult] = Field(description="Each configured loss over the pairs completed; empty if none.")
    pending_predictions: int
    pending_labels: int


class LabelDelay(BaseModel):
    p50: float | None = Field(description="Median seconds from prediction to label, over the joined pairs (1 %).")
    p90: float | None = Field(description="90th percentile of the same (1 % relative error).")


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
