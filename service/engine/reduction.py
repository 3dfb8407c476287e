"""How a batch of unreduced losses becomes `per_sample`, `sum` and `mean` under each convention.

This is the only place that weights and averages. A loss returns `LossValues`; it never reduces.

- keras: `sum_over_batch_size` (keras/src/losses/loss.py `reduce_weighted_values`): multiply by
  the sample weight, then divide the sum by the number of values. Masked (ignored) entries get
  Keras's mask weight `total / valid`, so the mean is over valid entries; with none valid, 0.
- torch: reduction='mean' divides by the summed weight of the non-ignored targets
  (`nll_loss`'s `total_weight`) when the loss has class weights, else by the number of values.
  A per-sample weight multiplies both numerator and denominator, `sum(w*l) / sum(w*d)`, which
  is the weighted mean PyTorch users write by hand from reduction='none'. CTCLoss divides each
  sample's loss by its target length before its mean (`mean_divisor`): then `sum` is the sum of
  those quotients, the one the mean divides, so that chunks still combine as sum / denominator.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.engine.conventions import Convention, DType
from service.engine.errors import LossInputError
from service.values.results import Aggregate as Aggregate  # the libraries' metrics declare theirs
from service.values.results import LossResult, mean_of

Array = NDArray[np.floating]


@dataclass(frozen=True)
class LossValues:
    """A loss's unreduced output, before any sample weight or reduction.

    `values` has the framework's unreduced shape with the loss's own weights applied.
    `denominator` is the per-value weight PyTorch divides by in its mean (class weights of the
    targets); None means every value counts once. `mask` is False where a target is ignored.
    `weighted_average`: the loss's own library averages as sum(w*l) / sum(w) under either
    convention (scikit-learn's np.average). `batch_mean`: under torch the mean divides the sum by
    the batch size N, however many values each sample has (KLDivLoss reduction='batchmean').
    `mean_divisor`: under torch the sum and the mean are of `values / mean_divisor`, one divisor per
    value (CTCLoss's reduction='mean' divides each sample's loss by its target length, at least 1);
    the values themselves stay as reduction='none' gives them.
    """

    values: Array
    denominator: Array | None = None
    mask: NDArray[np.bool_] | None = None
    weighted_average: bool = False
    batch_mean: bool = False
    mean_divisor: Array | None = None


def broadcast_sample_weight(sample_weight: Array, shape: tuple[int, ...]) -> Array:
    """One weight per sample (N,) applies to every value of that sample; a full-shape weight as is."""
    if sample_weight.shape == shape:
        return sample_weight
    if sample_weight.ndim == 1 and len(shape) >= 1 and sample_weight.shape[0] == shape[0]:
        return sample_weight.reshape(sample_weight.shape + (1,) * (len(shape) - 1))
    raise LossInputError(
        "sample_weight",
        f"shape {list(sample_weight.shape)} fits neither the batch ({shape[0] if shape else 0} samples) "
        f"nor the per-sample loss shape {list(shape)}",
    )


def reduce(
    loss: LossValues,
    sample_weight: Array | None,
    convention: Convention,
    name: str,
    dtype: DType,
    *,
    chunk: bool = False,
    shares: bool = False,
) -> LossResult:
    """The result of loss `name` under a framework convention, in `dtype`.

    `chunk`: this batch is part of a larger one, so a zero denominator (every target ignored or
    weighted 0) gives mean 0 and denominator 0 for the caller to combine, not an error.
    `shares`: also each sample's share of `sum` and `denominator` (`sample_shares`)."""
    values = loss.values
    weight = None if sample_weight is None else broadcast_sample_weight(sample_weight, values.shape)
    if convention == "keras" and not loss.weighted_average:
        per_sample, total, mean, denominator = _keras_reduce(values, weight, loss.mask)
    else:
        per_sample, total, mean, denominator = _torch_reduce(values, weight, loss, chunk)
    _check_finite(per_sample, total, mean)
    sums, denominators = sample_shares(loss, weight, convention) if shares else (None, None)
    return LossResult(
        loss=name,
        per_sample=per_sample,
        mean=float(mean),
        sum=float(total),
        count=int(per_sample.size),
        denominator=float(denominator),
        dtype=dtype,
        convention=convention,
        sample_sums=sums,
        sample_denominators=denominators,
    )


def reduce_library(
    loss: LossValues,
    sample_weight: Array | None,
    aggregate: Aggregate,
    name: str,
    dtype: DType,
    convention: Convention,
    *,
    chunk: bool = False,
    weight_sum: Callable[[Array], float] | None = None,
    shares: bool = False,
) -> LossResult:
    """The boosting libraries' weighted mean: sum(w l) / sum(w), each sample's weight counted once
    per value it has (XGBoost's `Reduce` over samples and targets), its square root, or (aggregate
    "sum") the weighted sum itself, with sum(w) still reported as the denominator.

    Each weighted value w * l is formed in the working dtype (XGBoost multiplies a float residue
    by a float weight) and the sums accumulate in float64 (XGBoost's and LightGBM's `double`
    accumulators), whatever the dtype. `weight_sum`: the library's own sum of the weights, where
    it is not a float64 sum (LightGBM's cross_entropy sums them in float32). `shares`: also each
    sample's share of `sum` and `denominator` (its weighted values, its weight per value); their
    float64 sums equal `sum` and, but for a `weight_sum` of another precision, `denominator`.
    """
    values = loss.values
    if sample_weight is None:
        per_sample, divisor = values, float(values.size)
    else:
        weight = broadcast_sample_weight(sample_weight, values.shape)
        per_sample = values * weight
        every = np.broadcast_to(weight, values.shape)
        divisor = weight_sum(every) if weight_sum is not None else float(every.sum(dtype=np.float64))
    total = float(per_sample.sum(dtype=np.float64))
    if divisor == 0 and not chunk and aggregate != "sum":
        raise LossInputError("sample_weight", "the weights sum to 0; the mean would be 0/0")
    mean = mean_of(total, divisor, aggregate)
    _check_finite(per_sample, np.float64(total), np.float64(mean))
    sums, denominators = (None, None)
    if shares:
        spread = None if sample_weight is None else broadcast_sample_weight(sample_weight, values.shape)
        sums, denominators = _per_sample(per_sample), _per_sample(_counted(spread, values.shape), values.shape)
    return LossResult(
        loss=name,
        per_sample=per_sample,
        mean=mean,
        sum=total,
        count=int(per_sample.size),
        denominator=divisor,
        dtype=dtype,
        convention=convention,
        aggregate=aggregate,
        sample_sums=sums,
        sample_denominators=denominators,
    )


def sample_shares(
    loss: LossValues, weight: Array | None, convention: Convention
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Each sample's share of a framework convention's `sum` and `denominator`, in float64: the
    terms `reduce` adds up, summed over the sample's values (axis 0 is the batch).

    keras sum_over_batch_size: the weighted values over 1 per value (1 per valid value where a
    mask ignores targets). torch: the weighted values (each over its `mean_divisor` for CTC) over
    the weighted per-value denominators (class weights, the mask, or 1); 'batchmean' counts each
    sample once, with its weight. A whole batch's shares add up to `reduce`'s sum and denominator
    (in float64, where `reduce` sums in the working dtype); a subset's to the subset's own."""
    values = loss.values
    if convention == "keras" and not loss.weighted_average:
        weighted = values if weight is None else values * weight
        if loss.mask is None:
            return _per_sample(weighted), _per_sample(None, values.shape)
        zero = values.dtype.type(0)
        return _per_sample(np.where(loss.mask, weighted, zero)), _per_sample(loss.mask)
    weighted = values if weight is None else values * weight
    if loss.batch_mean:
        counted = _per_sample(_counted(weight, values.shape), values.shape)
        return _per_sample(weighted), counted / (values.size // values.shape[0])
    if loss.mean_divisor is not None:
        return _per_sample(weighted / loss.mean_divisor), _per_sample(_counted(weight, values.shape), values.shape)
    denominator = loss.denominator if loss.denominator is not None else loss.mask
    if denominator is None:
        return _per_sample(weighted), _per_sample(_counted(weight, values.shape), values.shape)
    denominator = denominator.astype(values.dtype)
    return _per_sample(weighted), _per_sample(denominator if weight is None else denominator * weight)


def _counted(weight: Array | None, shape: tuple[int, ...]) -> Array | None:
    """Each value's weight (None: each value counts once)."""
    return None if weight is None else np.broadcast_to(weight, shape)


def _per_sample(terms: np.ndarray[Any, Any] | None, shape: tuple[int, ...] = ()) -> NDArray[np.float64]:
    """`terms` summed over each sample's values in float64; None: 1 per value of `shape`."""
    if terms is None:
        return np.full(shape[0], float(math.prod(shape[1:])))
    summed: NDArray[np.float64] = terms.reshape(terms.shape[0], -1).sum(axis=1, dtype=np.float64)
    return summed


def _keras_reduce(
    values: Array, weight: Array | None, mask: NDArray[np.bool_] | None
) -> tuple[Array, np.floating[Any], np.floating[Any], float]:
    count = values.size
    per_sample = values if weight is None else values * weight
    if mask is None:
        total = np.add.reduce(per_sample, axis=None)  # `sum()` without its Python wrapper
        return per_sample, total, total / count, count
    valid = np.count_nonzero(mask)
    # keras apply_mask: valid entries weigh total/valid (divide_no_nan), ignored ones 0.
    mask_weight = values.dtype.type(count / valid if valid else 0.0)
    float_mask = np.where(mask, mask_weight, values.dtype.type(0))
    mean_weight = float_mask if weight is None else weight * float_mask
    per_sample = np.where(mask, per_sample, values.dtype.type(0))
    return per_sample, per_sample.sum(), (values * mean_weight).sum() / count, float(valid)


def _torch_reduce(
    values: Array, weight: Array | None, loss: LossValues, chunk: bool
) -> tuple[Array, np.floating[Any], np.floating[Any], float]:
    if loss.batch_mean:
        return _batch_mean(values, weight)
    if loss.mean_divisor is not None:
        return _divided_mean(values, weight, loss.mean_divisor, chunk)
    if loss.denominator is not None:
        denominator = loss.denominator
    elif loss.mask is not None:
        denominator = loss.mask.astype(values.dtype)
    else:
        denominator = None
    if weight is not None:
        values = values * weight
        # A per-sample weight (N, 1, ...) counts once for every value of its sample.
        denominator = np.broadcast_to(weight, values.shape) if denominator is None else denominator * weight
    total = np.add.reduce(values, axis=None)  # `sum()` without its Python wrapper
    if denominator is None:
        return values, total, total / values.size, values.size
    divisor = denominator.sum()
    if divisor == 0 and chunk:
        return values, total, values.dtype.type(0), 0.0
    if divisor == 0:
        if loss.mask is not None and not loss.mask.any():
            raise LossInputError("labels", "every target equals the ignore index; PyTorch's mean would be 0/0 (NaN)")
        raise LossInputError("sample_weight", "the weights of the counted targets sum to 0; the mean would be 0/0")
    return values, total, total / divisor, divisor


def _batch_mean(values: Array, weight: Array | None) -> tuple[Array, np.floating[Any], np.floating[Any], float]:
    """sum / N, N the batch size. Weighted, each sample counts with its weight once, however many
    values it has: the divisor is the summed weight over the values of a sample, `size / N`."""
    samples = values.shape[0]
    if weight is None:
        total = values.sum()
        return values, total, total / samples, samples
    values = values * weight
    total = values.sum()
    divisor = np.broadcast_to(weight, values.shape).sum() / (values.size // samples)
    if divisor == 0:
        raise LossInputError("sample_weight", "the weights sum to 0; the mean would be 0/0")
    return values, total, total / divisor, float(divisor)


def _divided_mean(
    values: Array, weight: Array | None, divisor: Array, chunk: bool
) -> tuple[Array, np.floating[Any], np.floating[Any], float]:
    """sum(w l / d) / sum(w): each value divided by its divisor, then the (weighted) mean over the
    values. `sum` is the sum of the quotients and `denominator` the summed weights (the count)."""
    if weight is not None:
        values = values * weight
    total = (values / divisor).sum()
    if weight is None:
        return values, total, total / values.size, values.size
    counted = np.broadcast_to(weight, values.shape).sum()
    if counted == 0 and chunk:
        return values, total, values.dtype.type(0), 0.0
    if counted == 0:
        raise LossInputError("sample_weight", "the weights sum to 0; the mean would be 0/0")
    return values, total, total / counted, float(counted)


def _check_finite(per_sample: Array, total: np.floating[Any], mean: np.floating[Any]) -> None:
    """The last guard: a 200 never carries inf or NaN, whatever a formula did."""
    # A finite sum means finite elements; only a non-finite sum or mean pays for the element-wise
    # search. (math.isfinite reads a NumPy scalar far faster than np.isfinite does.)
    if math.isfinite(total) and math.isfinite(mean):
        return
    bad = ~np.isfinite(per_sample)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise LossInputError(
            "predictions",
            f"the loss of this sample is not finite ({per_sample[index].item()!r}); it overflows the dtype",
            index,
        )
    raise LossInputError("predictions", "the sum of the losses overflows the dtype; use float64")
