"""The loss routes' request and response models (`/v1/loss`, `/v1/evaluate`, the OIP route's
batch) and problem details. Each loss's options model is generated from its engine signature;
the catalogue's answers are in `catalogue_schemas.py`, the delayed-labels routes' in
`model_schemas.py` and `config_schemas.py`."""

from __future__ import annotations

import re
import typing
from collections.abc import Callable
from contextvars import ContextVar
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    create_model,
    model_validator,
)

from service.engine import LIBRARIES, Aggregate, Convention, DType, LossSpec, catalogue
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
from service.server.api.arrays import NumericArray

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
