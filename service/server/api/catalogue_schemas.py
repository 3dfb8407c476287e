"""The catalogue routes' answers: each loss with its options, and each library's metrics
(`GET /v1/losses`, `GET /v1/conventions/{library}`)."""

from __future__ import annotations

from typing import Any

from pydantic import (
    BaseModel,
    Field,
)

from service.engine import FRAMEWORKS, Aggregate, Convention, LossSpec
from service.engine.libraries import LibraryMetric, metrics
from service.option_models import UNKNOWN_KEYS as UNKNOWN_KEYS  # the error handler names them


class OptionInfo(BaseModel):
    name: str
    type: str
    default: Any
    description: str
    range: str | None = None
    only_under: Convention | None = None
    aliases: list[str] = []
    per_sample: bool = Field(
        default=False,
        description="The option holds one value per sample (a list of N): a chunk of the batch takes its own slice.",
    )


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
    whole_batch: bool = Field(
        default=False,
        description="A sample's loss depends on the rest of the batch (classes read from all its labels, pairs "
        "with every other sample): the batch's chunks would not combine to its answer, so it is sent whole, "
        "unless one of `separable_with` is given.",
    )
    separable_with: list[str] = Field(
        default=[],
        description="Options of a whole-batch loss that, once given (not null), make each sample's loss depend on "
        "its own rows alone: the batch then splits into chunks exactly.",
    )
    expected: str | None = Field(
        default=None,
        description="The formula of the loss's expected value and variance per sample under a belief about the "
        "label (the prediction's own distribution, or a calibrated one); null: the loss has none (it does not score "
        "a predicted class), and an estimate configured for it is refused.",
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
            per_sample=o.per_sample,
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
        whole_batch=spec.whole_batch,
        separable_with=list(spec.separable_with),
        expected=spec.expected_formula or None,
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
