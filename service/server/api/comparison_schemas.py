"""A comparison as `GET /v1/models/{challenger}/compare/{champion}` answers it (`Comparison`): each
model's mean over the ids both joined, the paired difference with its confidence sequence, and the
verdict, over the window and (with `by`) per segment value."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ComparedModel(BaseModel):
    model: str
    mean: float | None = Field(
        description="What /v1/loss returns for this model's pairs of the compared ids under its configuration; null "
        "where none counts."
    )


class PairedDifference(BaseModel):
    mean: float | None = Field(description="Challenger's mean minus champion's, over the same ids.")
    low: float | None = Field(
        description="Lower bound of the 1 - alpha anytime-valid confidence sequence for the difference; null while "
        "undefined (fewer than two pairs)."
    )
    high: float | None = Field(description="Upper bound of the same.")


class ComparedSegment(BaseModel):
    segment: str | None = Field(description="The segment value (null: ids whose challenger prediction has none).")
    n: int = Field(description="Ids both models joined with this value, that count (denominator > 0).")
    challenger: ComparedModel
    champion: ComparedModel
    difference: PairedDifference
    verdict: Literal["better", "worse", "undecided"]


class SequencePoint(BaseModel):
    end: float = Field(description="Unix seconds: the end of the step (the window's end for the last).")
    n: int = Field(description="Pairs made before it.")
    mean: float | None
    low: float | None
    high: float | None
    verdict: Literal["better", "worse", "undecided"]


class Comparison(BaseModel):
    loss: str = Field(description="The compared loss, as both models configure it.")
    start: float = Field(description="Unix seconds: ids whose challenger prediction was made in [start, end).")
    end: float
    n: int = Field(description="Ids both models joined in the window, that count (denominator > 0).")
    challenger: ComparedModel
    champion: ComparedModel
    difference: PairedDifference
    verdict: Literal["better", "worse", "undecided"] = Field(
        description="better: the whole sequence lies below 0 (the challenger's loss is lower); worse: above 0."
    )
    alpha: float = Field(description="1 - alpha is the sequence's coverage, at every time at once.")
    method: str = Field(description="How the sequence is computed (docs/comparisons.md).")
    step: float | None = Field(default=None, description="With `step`: its width in seconds. Absent otherwise.")
    sequence: list[SequencePoint] | None = Field(
        default=None,
        description="With `step`: the difference and its bounds over the pairs made before each step's end, from "
        "the first step holding a pair; the last is the answer's own.",
    )
    by: str | None = Field(default=None, description="With `by`: the segment key. Absent otherwise.")
    segments: list[ComparedSegment] | None = Field(
        default=None, description="With `by`: the same per segment value, each sequence at 1 - alpha on its own."
    )
