"""The expected loss on real monitoring data: estimated before the labels, realized after, per chunk.

    python bench/estimate_real_data.py [--chunk-size 5000]

The data set is NannyML's US Census employment data for Massachusetts (`employment_MA_*.pq`, read
from the installed `nannyml` package's own files, never from the network): rows of the American
Community Survey's person records, the label whether the person is employed, one `year` per row
(the reference period 2015, the analysis period 2016-2018), and the predicted probability and
predicted class of a classifier NannyML trained. The analysis period's labels ship
in a separate file, as labels that arrive later would. The rows are in year order; the chunks are
consecutive runs of `--chunk-size` rows (the last one shorter), as NannyML's size-based chunker cuts
them, so a chunk is a stretch of time.

Per chunk of the analysis period, from the predicted probabilities p alone, each twice: under the
prediction's own distribution (q = p, nothing fitted) and under q recalibrated on the reference
period (the engine's `fit_isotonic`, read at a new p as scikit-learn's IsotonicRegression reads it):
- the estimated log loss (`expected_loss("log_loss", p, q=q)`) with its ±3σ band, and the realized
  log loss once the labels are in (`compute`);
- the estimated accuracy, 1 − E[`zero_one`], with its ±3σ band, and the realized accuracy;
and NannyML CBPE's estimated accuracy for the same chunks (fitted on the reference period, as its
documentation does: it recalibrates the probabilities there by isotonic regression too).

Then the mean absolute error of each accuracy estimate, and the share of chunks whose realized
value lies inside the band. docs/losses.md shows the table and says what the estimate assumes;
tests/offline/test_estimate_real_data.py runs the same functions.
"""

from __future__ import annotations

import argparse
import importlib.resources
import math
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.engine import compute, expected_loss  # noqa: E402
from service.engine.recalibration import fit_isotonic  # noqa: E402

Floats = np.ndarray[Any, np.dtype[np.float64]]

CHUNK_SIZE = 5000
BAND = 3.0
FILES = ("employment_MA_reference.pq", "employment_MA_analysis.pq", "employment_MA_analysis_target.pq")


@dataclass(frozen=True)
class Period:
    """One period of the data set: predicted P(employed), predicted class, label, year per row."""

    probability: np.ndarray[Any, np.dtype[np.float64]]
    prediction: np.ndarray[Any, np.dtype[np.int64]]
    label: np.ndarray[Any, np.dtype[np.int64]]
    year: np.ndarray[Any, np.dtype[np.int64]]
    frame: Any  # the pandas frame NannyML is given


@dataclass(frozen=True)
class Estimate:
    """One estimate of a chunk's mean: the value, its σ, and the realized mean it is compared with."""

    value: float
    sigma: float
    realized: float

    @property
    def error(self) -> float:
        """Estimate − realized."""
        return self.value - self.realized

    def inside(self, width: float = BAND) -> bool:
        return abs(self.error) <= width * self.sigma


@dataclass(frozen=True)
class Chunk:
    """One chunk's estimates: under the prediction's own distribution (`own_*`) and under the
    probabilities recalibrated on the reference period (`recalibrated_*`); CBPE's accuracy."""

    start: int  # first row, inclusive
    end: int  # last row, exclusive
    years: str
    own_log_loss: Estimate
    recalibrated_log_loss: Estimate
    own_accuracy: Estimate
    recalibrated_accuracy: Estimate
    cbpe_accuracy: float = math.nan

    @property
    def n(self) -> int:
        return self.end - self.start

    @property
    def cbpe_error(self) -> float:
        return self.cbpe_accuracy - self.own_accuracy.realized


def nannyml_available() -> bool:
    try:
        import nannyml  # noqa: F401
    except ImportError:
        return False
    return True


def load() -> tuple[Period, Period]:
    """The reference and analysis periods, from the files inside the installed nannyml package
    (importlib.resources; NannyML is imported only to find them)."""
    import pandas as pd

    data = importlib.resources.files("nannyml.datasets.data")
    reference_frame, analysis_frame, targets = (pd.read_parquet(data.joinpath(name)) for name in FILES)
    if not (analysis_frame["id"].to_numpy() == targets["id"].to_numpy()).all():
        raise ValueError("the analysis targets are not in the analysis rows' order")
    analysis_frame = analysis_frame.assign(employed=targets["employed"].to_numpy())
    return _period(reference_frame), _period(analysis_frame)


def _period(frame: Any) -> Period:
    return Period(
        probability=frame["predicted_probability"].to_numpy(np.float64),
        prediction=frame["prediction"].to_numpy(np.int64),
        label=frame["employed"].to_numpy(np.int64),
        year=frame["year"].to_numpy(np.int64),
        frame=frame,
    )


def bounds(n: int, size: int) -> list[tuple[int, int]]:
    """Consecutive runs of `size` rows, the last one the remainder (NannyML's SizeBasedChunker,
    incomplete='keep')."""
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def recalibration(reference: Period) -> Callable[[Floats], Floats]:
    """P(y = 1 | p) fitted on the reference period by the engine's isotonic recalibration
    (`fit_isotonic`: scikit-learn's IsotonicRegression with out_of_bounds='clip', which CBPE fits on
    the reference period too) and read at new p."""
    fitted = fit_isotonic(reference.probability, reference.label.astype(np.float64))
    return lambda p: fitted.apply(p)


def estimate_chunk(period: Period, start: int, end: int, recalibrate: Callable[[Floats], Floats]) -> Chunk:
    """Our estimates and the realized values for rows [start, end): the log loss and accuracy of the
    predicted probabilities p as logged, expected under p itself and under q = recalibrate(p)."""
    p = period.probability[start:end]
    y = period.label[start:end]
    q = recalibrate(p)
    realized_log_loss = compute("log_loss", p, y).mean
    realized_accuracy = 1.0 - compute("zero_one", p, y).mean

    def log_loss(belief: Floats | None) -> Estimate:
        totals = expected_loss("log_loss", p, q=belief).totals()
        return Estimate(totals.estimate, totals.sigma, realized_log_loss)

    def accuracy(belief: Floats | None) -> Estimate:
        totals = expected_loss("zero_one", p, q=belief).totals()
        return Estimate(1.0 - totals.estimate, totals.sigma, realized_accuracy)

    years = sorted(set(period.year[start:end].tolist()))
    return Chunk(
        start=start,
        end=end,
        years=str(years[0]) if len(years) == 1 else f"{years[0]}-{years[-1]}",
        own_log_loss=log_loss(None),
        recalibrated_log_loss=log_loss(q),
        own_accuracy=accuracy(None),
        recalibrated_accuracy=accuracy(q),
    )


def cbpe_accuracy(reference: Period, analysis: Period, size: int) -> list[tuple[int, int, float, float]]:
    """NannyML CBPE's estimated accuracy per chunk of `size` rows of the analysis period, fitted on
    the reference period: (start, end exclusive, estimated, NannyML's realized) per chunk."""
    os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")  # no usage reports sent from a test
    import nannyml

    estimator = nannyml.CBPE(
        problem_type="classification_binary",
        y_pred_proba="predicted_probability",
        y_pred="prediction",
        y_true="employed",
        metrics=["accuracy"],
        chunk_size=size,
    )
    with warnings.catch_warnings():  # NannyML's own deprecation warnings under pandas 3, not ours
        warnings.simplefilter("ignore")
        estimator.fit(reference.frame)
        results = estimator.estimate(analysis.frame).filter(period="analysis").to_df()
    return [
        (int(start), int(end) + 1, float(value), float(realized))
        for start, end, value, realized in zip(
            results[("chunk", "start_index")],
            results[("chunk", "end_index")],
            results[("accuracy", "value")],
            results[("accuracy", "realized")],
            strict=True,
        )
    ]


def run(size: int = CHUNK_SIZE) -> list[Chunk]:
    """Every analysis chunk: our estimates, the realized values and CBPE's estimate."""
    reference, analysis = load()
    recalibrate = recalibration(reference)
    ours = [estimate_chunk(analysis, start, end, recalibrate) for start, end in bounds(analysis.label.size, size)]
    theirs = cbpe_accuracy(reference, analysis, size)
    if [(c.start, c.end) for c in ours] != [(start, end) for start, end, _, _ in theirs]:
        raise ValueError("CBPE cut the analysis period into other chunks than ours")
    for chunk, (_, _, _, realized) in zip(ours, theirs, strict=True):
        if abs(realized - chunk.own_accuracy.realized) > 1e-12:
            raise ValueError(f"rows {chunk.start}-{chunk.end}: CBPE's realized accuracy {realized} is not ours")
    return [replace(chunk, cbpe_accuracy=estimate) for chunk, (_, _, estimate, _) in zip(ours, theirs, strict=True)]


@dataclass(frozen=True)
class Summary:
    """Over the chunks: mean absolute errors, and the shares of chunks whose realized value lies
    inside the ±3σ band (CBPE's estimate read with our σ)."""

    chunks: int
    own_accuracy_mae: float
    recalibrated_accuracy_mae: float
    cbpe_mae: float
    own_log_loss_mae: float
    recalibrated_log_loss_mae: float
    own_accuracy_inside: float
    recalibrated_accuracy_inside: float
    cbpe_inside: float
    own_log_loss_inside: float
    recalibrated_log_loss_inside: float


def summarize(chunks: list[Chunk]) -> Summary:
    def mae(estimates: list[Estimate]) -> float:
        return float(np.mean([abs(e.error) for e in estimates]))

    def inside(estimates: list[Estimate]) -> float:
        return float(np.mean([e.inside() for e in estimates]))

    return Summary(
        chunks=len(chunks),
        own_accuracy_mae=mae([c.own_accuracy for c in chunks]),
        recalibrated_accuracy_mae=mae([c.recalibrated_accuracy for c in chunks]),
        cbpe_mae=float(np.mean([abs(c.cbpe_error) for c in chunks])),
        own_log_loss_mae=mae([c.own_log_loss for c in chunks]),
        recalibrated_log_loss_mae=mae([c.recalibrated_log_loss for c in chunks]),
        own_accuracy_inside=inside([c.own_accuracy for c in chunks]),
        recalibrated_accuracy_inside=inside([c.recalibrated_accuracy for c in chunks]),
        cbpe_inside=float(np.mean([abs(c.cbpe_error) <= BAND * c.recalibrated_accuracy.sigma for c in chunks])),
        own_log_loss_inside=inside([c.own_log_loss for c in chunks]),
        recalibrated_log_loss_inside=inside([c.recalibrated_log_loss for c in chunks]),
    )


def _cell(estimate: Estimate) -> str:
    mark = "" if estimate.inside() else " *"
    return f"{estimate.value:.4f} ± {BAND * estimate.sigma:.4f} ({estimate.error:+.4f}{mark})"


def table(chunks: list[Chunk]) -> str:
    """The per-chunk table and the summary, as Markdown."""
    lines = [
        "| rows | year | n | log loss, own p | log loss, recal. q | realized | accuracy, own p "
        "| accuracy, recal. q | CBPE | realized |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in chunks:
        lines.append(
            f"| {c.start}–{c.end - 1} | {c.years} | {c.n} | {_cell(c.own_log_loss)} | {_cell(c.recalibrated_log_loss)} "
            f"| {c.own_log_loss.realized:.4f} | {_cell(c.own_accuracy)} | {_cell(c.recalibrated_accuracy)} "
            f"| {c.cbpe_accuracy:.4f} ({c.cbpe_error:+.4f}) | {c.own_accuracy.realized:.4f} |"
        )
    s = summarize(chunks)
    lines += [
        "",
        "Each estimate: value ± 3σ (estimate − realized); * the realized value lies outside the ±3σ band.",
        "",
        "| over the chunks | own p | recal. q | CBPE |",
        "|---|---:|---:|---:|",
        f"| accuracy: mean absolute error | {s.own_accuracy_mae:.4f} | {s.recalibrated_accuracy_mae:.4f} "
        f"| {s.cbpe_mae:.4f} |",
        f"| accuracy: mean absolute error / CBPE's | {s.own_accuracy_mae / s.cbpe_mae:.2f} "
        f"| {s.recalibrated_accuracy_mae / s.cbpe_mae:.2f} | 1 |",
        f"| accuracy: realized inside ±3σ (CBPE: with recal. q's σ) | {s.own_accuracy_inside:.0%} "
        f"| {s.recalibrated_accuracy_inside:.0%} | {s.cbpe_inside:.0%} |",
        f"| log loss: mean absolute error | {s.own_log_loss_mae:.4f} | {s.recalibrated_log_loss_mae:.4f} | — |",
        f"| log loss: realized inside ±3σ | {s.own_log_loss_inside:.0%} | {s.recalibrated_log_loss_inside:.0%} | — |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--chunk-size", type=int, default=CHUNK_SIZE)
    args = parser.parse_args()
    if not nannyml_available():
        sys.exit("nannyml is not installed: .ci/run shows how (without its dependencies)")
    print(table(run(args.chunk_size)))


if __name__ == "__main__":
    main()
