"""The loss engine: pure NumPy, no HTTP. `compute` is its entry point; `expected_loss` gives a
loss's expected value and variance per sample before the labels arrive.

>>> compute("mse", [[1.0, 2.0]], [[1.0, 4.0]]).mean
2.0
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from service.engine import libraries
from service.engine import losses as _losses  # noqa: F401  (fills the catalogue)
from service.engine.checks import check_not_empty, first_nonfinite
from service.engine.conventions import CONVENTIONS, DTYPES, FRAMEWORKS, LIBRARIES, Convention, DType
from service.engine.errors import LossInputError, UnknownLossError
from service.engine.expectation import ExpectedLoss, ExpectedTotals
from service.engine.parallel import available_cores, loss_values, set_threads
from service.engine.reduction import Array, reduce, reduce_library
from service.engine.registry import LossSpec, OptionSpec, catalogue, resolve
from service.values.results import Aggregate, LossResult, Totals, combine, mean_of

__all__ = [
    "CONVENTIONS",
    "DTYPES",
    "FRAMEWORKS",
    "LIBRARIES",
    "Aggregate",
    "Convention",
    "DType",
    "ExpectedLoss",
    "ExpectedTotals",
    "LossInputError",
    "LossResult",
    "LossSpec",
    "OptionSpec",
    "Totals",
    "UnknownLossError",
    "aggregate_of",
    "as_working_array",
    "available_cores",
    "catalogue",
    "combine",
    "compute",
    "expected_loss",
    "first_nonfinite",
    "libraries",
    "loss_name",
    "mean_of",
    "recombines",
    "resolve",
    "set_threads",
    "working_bytes",
]

# Arrays the size of the predictions that one loss holds at once at most, in the working dtype:
# converted inputs, temporaries and the per-sample answer. Measured over the catalogue (both
# conventions, both dtypes, probabilities and logits) by tests/engine/test_engine_memory.py. The worst
# are the scoring rules over 1-D binary probabilities, which work on two columns per sample (14.3
# for log loss in float32 from float64 inputs); of the rest, CTC over one step of two classes (13.6
# in float32: its lattice and per-sequence lengths against two numbers a sample), sigmoid focal loss (9.1).
WORKING_ARRAYS = 16


def compute(
    loss: str,
    predictions: ArrayLike,
    labels: ArrayLike,
    *,
    options: Mapping[str, Any] | None = None,
    sample_weight: ArrayLike | None = None,
    dtype: DType = "float64",
    convention: Convention = "keras",
    chunk: bool = False,
    inputs_finite: bool = False,
    shares: bool = False,
) -> LossResult:
    """Per-sample losses and their reductions for one batch, as `convention` computes them in `dtype`.

    `chunk`: the batch is one part of a larger batch; see `reduction.reduce`. `inputs_finite`: the
    caller searched the arrays for NaN and infinities already (the HTTP layer's array validator
    does, with `first_nonfinite`), so they are not searched again; narrowing to float32 is still
    checked, and so is every answer (`reduction`'s last guard). `shares`: the result also holds
    each sample's share of `sum` and `denominator` (`LossResult.sample_sums`, `sample_denominators`).
    """
    if convention in LIBRARIES:
        return _compute_library(
            loss, predictions, labels, options, sample_weight, dtype, convention, chunk, inputs_finite, shares
        )
    spec = resolve(loss)
    if convention not in CONVENTIONS:
        raise LossInputError("convention", f"must be one of {list(CONVENTIONS)}, got {convention!r}")
    if dtype not in DTYPES:
        raise LossInputError("dtype", f"must be one of {list(DTYPES)}, got {dtype!r}")
    bound = spec.bind(options, convention)
    x, y, weight = _arrays(spec, predictions, labels, sample_weight, np.dtype(dtype), inputs_finite)
    with np.errstate(over="ignore", under="ignore"):
        values = loss_values(spec, x, y, convention, bound)
        return reduce(values, weight, convention, spec.name, dtype, chunk=chunk, shares=shares)


def expected_loss(
    loss: str,
    predictions: ArrayLike,
    *,
    options: Mapping[str, Any] | None = None,
    convention: Convention = "keras",
    dtype: DType = "float64",
    q: ArrayLike | None = None,
    sample_weight: ArrayLike | None = None,
) -> ExpectedLoss:
    """Each sample's expected loss and its variance before its label is known (`expectation`).

    The label is taken to be class c with probability q_c: q is the calibrated belief, (N,) P(class 1)
    for one binary column or (N, C); by default the prediction's own distribution. The loss scored
    is the one `compute` gives for these predictions, options, convention and dtype; the moments
    are of each sample's share of its `sum` and `denominator` (`compute(..., shares=True)`).
    Only the losses whose catalogue entry has an `expected` function have one; the others
    (regression, margin, distribution losses) are refused by name.
    """
    spec = resolve(loss)
    if convention not in FRAMEWORKS:
        raise LossInputError(
            "convention", f"must be one of {list(FRAMEWORKS)} for an expected loss, got {convention!r}"
        )
    if dtype not in DTYPES:
        raise LossInputError("dtype", f"must be one of {list(DTYPES)}, got {dtype!r}")
    if spec.expected is None:
        having = ", ".join(s.name for s in catalogue() if s.expected is not None)
        raise LossInputError(
            "loss", f"{spec.name} has no expected loss (it does not score a predicted class); losses with one: {having}"
        )
    bound = spec.bind(options, convention)
    working = np.dtype(dtype)
    x = as_working_array(predictions, "predictions", working)
    check_not_empty(x)
    weight = None
    if sample_weight is not None:
        weight = as_working_array(sample_weight, "sample_weight", working)
        if weight.shape != x.shape[:1]:
            raise LossInputError(
                "sample_weight", f"shape {list(weight.shape)} should be [{x.shape[0]}], one per sample"
            )
        if (weight < 0).any():
            raise LossInputError("sample_weight", "weights must be >= 0", (int(np.argwhere(weight < 0)[0][0]),))
    return spec.expected(x, bound, convention, q=q, sample_weight=weight)


def _compute_library(
    loss: str,
    predictions: ArrayLike,
    labels: ArrayLike,
    options: Mapping[str, Any] | None,
    sample_weight: ArrayLike | None,
    dtype: DType,
    convention: Convention,
    chunk: bool,
    inputs_finite: bool,
    shares: bool = False,
) -> LossResult:
    """A library metric (`service.engine.libraries`), reduced as the library reduces it."""
    if dtype not in DTYPES:
        raise LossInputError("dtype", f"must be one of {list(DTYPES)}, got {dtype!r}")
    metric, bound = libraries.bind(convention, loss, options)
    x, y, weight = _arrays(metric.spec, predictions, labels, sample_weight, np.dtype(dtype), inputs_finite)
    if metric.float32_targets:  # the library's float32 label and weight arrays (CatBoost's, LightGBM's label_t)
        if not metric.spec.class_labels:
            y = _as_float32(y, "labels")
        weight = None if weight is None else _as_float32(weight, "sample_weight")
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
        values = loss_values(metric.spec, x, y, convention, bound)
        name = metric.display_name(bound)
        return reduce_library(
            values,
            weight,
            metric.aggregate,
            name,
            dtype,
            convention,
            chunk=chunk,
            weight_sum=metric.weight_sum,
            shares=shares,
        )


def _as_float32(values: Array, field: str) -> Array:
    """`values` rounded to float32 and held in their working dtype; beyond float32's range refused.
    `_arrays` (or the caller) searched them for NaN already: only the narrowing is checked here."""
    return as_working_array(values, field, np.dtype(np.float32), finite=True).astype(values.dtype)


def aggregate_of(loss: str, convention: Convention, options: Mapping[str, Any] | None = None) -> Aggregate:
    """How the loss's `mean` follows from its `sum` and `denominator` (`results.AGGREGATES`):
    a library metric's own aggregate, "mean" for every catalogue loss."""
    if convention in LIBRARIES:
        return libraries.bind(convention, loss, options)[0].aggregate
    return "mean"


def recombines(loss: str, convention: Convention, options: Mapping[str, Any] | None = None) -> bool:
    """Whether the loss's mean over any subset of a batch is the sum of the subset's
    `sample_sums` over the sum of its `sample_denominators`, as `compute` gives it for the subset
    alone (float64). Not for a loss whose samples read the rest of their batch (`whole_batch`:
    circle; log loss and the Brier score read their classes from the batch unless
    `options.classes` names them), nor for LightGBM's cross_entropy metrics, which sum their
    weights in float32."""
    if convention in LIBRARIES:
        metric, _ = libraries.bind(convention, loss, options)
        return not metric.spec.whole_batch and metric.weight_sum is None
    spec = resolve(loss)
    if not spec.whole_batch:
        return True
    bound = spec.bind(options, convention)
    return bound.get("classes") is not None


def loss_name(loss: str, convention: Convention, options: Mapping[str, Any] | None = None) -> str:
    """The name an answer reports: the catalogue name (aliases resolved) under keras and torch; the
    metric as its library names it (XGBoost's `error@0.7`, the key of `evals_result()`) otherwise."""
    if convention in LIBRARIES:
        metric, bound = libraries.bind(convention, loss, options)
        return metric.display_name(bound)
    return resolve(loss).name


def _arrays(
    spec: LossSpec,
    predictions: ArrayLike,
    labels: ArrayLike,
    sample_weight: ArrayLike | None,
    working: np.dtype[Any],
    finite: bool,
) -> tuple[Array, Any, Array | None]:
    x = as_working_array(predictions, "predictions", working, finite=finite)
    check_not_empty(x)
    y: Any
    if spec.class_labels:
        y = _as_class_indices(labels, finite)
    else:
        y = as_working_array(labels, "labels", working, finite=finite)
    weight = None if sample_weight is None else as_working_array(sample_weight, "sample_weight", working, finite=finite)
    if weight is not None and (weight < 0).any():
        index = tuple(int(i) for i in np.argwhere(weight < 0)[0])
        raise LossInputError("sample_weight", "weights must be >= 0", index)
    return x, y, weight


def working_bytes(elements: int, dtype: DType = "float64") -> int:
    """An upper bound on the memory `compute` allocates for `elements` predictions in `dtype`
    (any catalogue loss, labels and weights included)."""
    return elements * np.dtype(dtype).itemsize * WORKING_ARRAYS


def as_working_array(values: ArrayLike, field: str, dtype: np.dtype[Any], *, finite: bool = False) -> Array:
    """Convert to the working dtype, refusing values that are or become non-finite.

    `finite`: the values were searched already (`compute`'s `inputs_finite`); only what the
    conversion itself makes infinite is looked for."""
    array = np.asarray(values)
    if array.dtype.kind not in "fiu":
        raise LossInputError(field, f"must hold numbers, got an array of {array.dtype}")
    if not finite:
        _check_finite(array, field, "is not a finite number")
    if array.dtype.kind != "f" or array.dtype.itemsize <= dtype.itemsize:  # only narrowing overflows
        return array.astype(dtype, copy=False)
    with np.errstate(over="ignore"):
        converted = array.astype(dtype)
    _check_finite(converted, field, f"overflows {dtype} (magnitude above {np.finfo(dtype).max:.4g})")
    return converted


def _as_class_indices(values: ArrayLike, finite: bool) -> np.ndarray[Any, np.dtype[np.intp]]:
    """Integer class labels as np.intp; integral floats (1.0) are accepted, fractions are not."""
    array = np.asarray(values)
    if array.dtype.kind in "iu":
        return array.astype(np.intp, copy=False)
    if array.dtype.kind != "f":
        raise LossInputError("labels", f"must hold integer class indices, got an array of {array.dtype}")
    if not finite:
        _check_finite(array, "labels", "is not a finite number")
    fractional = array != np.floor(array)
    if fractional.any():
        index = tuple(int(i) for i in np.argwhere(fractional)[0])
        raise LossInputError("labels", f"class labels must be integers, got {array[index].item()!r}", index)
    # Beyond 2^62 a label would not survive the cast to an integer index; no float16 gets there
    # (and 2^62 itself overflows float16, with a warning).
    huge = np.abs(array) >= 2.0**62 if float(np.finfo(array.dtype).max) >= 2.0**62 else np.zeros(0, bool)
    if huge.any():
        index = tuple(int(i) for i in np.argwhere(huge)[0])
        raise LossInputError("labels", f"{array[index].item()!r} is too large to be a class index", index)
    return array.astype(np.intp)


def _check_finite(array: np.ndarray[Any, Any], field: str, reason: str) -> None:
    index = first_nonfinite(array)
    if index is not None:
        raise LossInputError(field, f"{array[index].item()!r} {reason}", index)
