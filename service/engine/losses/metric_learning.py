"""Metric-learning losses over a batch of embeddings: a sample's loss depends on the whole batch.

Keras source followed: keras/src/losses/losses.py (circle) and keras/src/utils/numerical_utils.py
(build_pos_neg_masks).
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from numpy.typing import NDArray

from service.engine.conventions import Convention
from service.engine.errors import LossInputError
from service.engine.options import Doc
from service.engine.reduction import Array, LossValues
from service.engine.registry import register


def _masked_logsumexp(values: Array, mask: NDArray[np.bool_]) -> Array:
    """log sum_j exp(values_ij) over the j where mask_ij, row by row; -inf for a row with none."""
    masked = np.where(mask, values, -np.inf)
    top = masked.max(axis=1)
    any_valid = mask.any(axis=1)
    shift = np.where(any_valid, top, 0.0).astype(values.dtype)
    with np.errstate(divide="ignore"):
        summed = np.log(np.exp(masked - shift[:, None]).sum(axis=1))
    return np.where(any_valid, shift + summed, -np.inf).astype(values.dtype)


def _circle_rows(
    embeddings: Array, classes: NDArray[np.intp], rows: slice, gamma: float, margin: float, remove_diagonal: bool
) -> Array:
    """softplus(lp_i + ln_i) for the samples in `rows` against the whole batch."""
    dtype = embeddings.dtype.type
    positive = classes[rows, None] == classes[None, :]
    negative = ~positive
    if remove_diagonal:
        indices = np.arange(rows.start, rows.stop)
        positive[indices - rows.start, indices] = False
    distances = np.maximum(1 - embeddings[rows] @ embeddings.T, dtype(0))
    pos_weights = np.maximum((margin + distances) * positive, dtype(0))
    pos_logits = -1 * gamma * pos_weights * (margin - distances)
    del pos_weights
    neg_weights = np.maximum((1 + margin - distances) * negative, dtype(0))
    neg_logits = gamma * neg_weights * ((1 - margin) - distances)
    del neg_weights, distances
    logits = _masked_logsumexp(pos_logits, positive) + _masked_logsumexp(neg_logits, negative)
    return np.logaddexp(logits, dtype(0))


MAX_SAMPLES = 4096  # circle's pairs grow as N^2: 16.8 million pairs at most


@register("circle", aliases=("circle_loss",), class_labels=True, whole_batch=True)
def circle(
    predictions: Array,
    labels: NDArray[np.intp],
    convention: Convention,
    /,
    *,
    gamma: Annotated[float, Doc("scale of the similarities inside the log-sum-exps")] = 80.0,
    margin: Annotated[float, Doc("relaxation margin m: optima 1 + m and -m, decision margins 1 - m and m")] = 0.4,
    remove_diagonal: Annotated[bool, Doc("leave each sample's pair with itself out of its positives")] = True,
) -> LossValues:
    """Circle loss (Sun et al. 2020) of a batch of embeddings and their integer class labels.

    Formula:
        d_ij = max(1 - e_i . e_j, 0) (cosine distance; embeddings are taken as given, Keras expects
        them L2-normalised); positives: i != j (remove_diagonal) with y_i = y_j; negatives: y_i != y_j
        lp_i = logsumexp_{j positive} -gamma max(m + d_ij, 0) (m - d_ij)
        ln_i = logsumexp_{j negative}  gamma max(1 + m - d_ij, 0) (1 - m - d_ij)
        loss_i = softplus(lp_i + ln_i); a sample without a positive or a negative scores 0 and
        is left out of the mean (Keras's mask loss > 0), under both conventions

    Shapes:
        predictions: embeddings (N, D); labels: integers (N,) or (N, 1), any values (classes
        compare by equality); the batch is its own reference set, at most 4096 embeddings.
        per_sample: (N,).

    Follows:
        keras/src/losses/losses.py circle and Circle (ref_labels and ref_embeddings left at
        None), keras/src/utils/numerical_utils.py build_pos_neg_masks; arXiv:2002.10857.
    """
    if predictions.ndim != 2:
        raise LossInputError("predictions", f"embeddings must be 2-D (N, D), got shape {list(predictions.shape)}")
    samples = predictions.shape[0]
    if labels.shape not in ((samples,), (samples, 1)):
        raise LossInputError(
            "labels", f"shape {list(labels.shape)} should be [{samples}] or [{samples}, 1], one class per embedding"
        )
    if samples > MAX_SAMPLES:
        raise LossInputError(
            "predictions",
            f"{samples} embeddings: circle compares every pair, so a batch holds at most {MAX_SAMPLES}",
        )
    classes = labels.reshape(samples)
    # Rows in blocks of about as many pairs as the batch has numbers, so that the pairwise arrays
    # stay within the engine's working memory (a small multiple of the input's size).
    block = max(1, predictions.size // samples)
    values = np.empty(samples, dtype=predictions.dtype)
    for start in range(0, samples, block):
        rows = slice(start, min(start + block, samples))
        values[rows] = _circle_rows(predictions, classes, rows, gamma, margin, remove_diagonal)
    mask = values > 0
    if convention == "torch" and not mask.any():
        raise LossInputError(
            "labels", "no sample has both a positive and a negative in the batch; the mean would be 0/0"
        )
    return LossValues(values, mask=mask)
