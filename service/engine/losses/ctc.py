"""Connectionist temporal classification: the negative log-likelihood of a label sequence summed
over every alignment of it with a sequence of per-step class distributions.

Both conventions run the forward (alpha) recursion in log space, vectorised over the batch, one
time step at a time, in the working dtype (float32 or float64: PyTorch computes in the dtype of its
log-probabilities, Keras in its loss dtype, float32 by default).

PyTorch source followed: torch/nn/functional.py ctc_loss and aten/src/ATen/native/LossCTC.cpp
(ctc_loss_cpu_template: alpha over the extended labels, la1/la2/la3 added after subtracting their
maximum; ctc_loss_impl: zero_infinity, and reduction='mean' dividing by the target lengths clamped
to 1). Keras source followed: keras/src/losses/losses.py (CTC, ctc: log-softmax of logits, the
blank 0 as padding, full input lengths) and keras/src/backend/numpy/nn.py ctc_loss (the jax
backend's is the same: optax's ctc_loss_with_forward_probs, with -1e5 standing in for log 0).
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from numpy.typing import NDArray

from service.engine.conventions import Convention
from service.engine.errors import LossInputError
from service.engine.numerics import log_softmax
from service.engine.options import Aliases, Doc, OnlyUnder, PerSample
from service.engine.reduction import Array, LossValues
from service.engine.registry import register

Labels = NDArray[np.intp]
Lengths = NDArray[np.int32]  # at most MAX_TIME_STEPS

# Bounds on the work a request may ask for: the recursion takes T steps, each over an (N, 2S + 1)
# lattice, whatever the number of classes; about 50 ns a cell (float64, one core).
MAX_TIME_STEPS = 10_000
MAX_LATTICE_CELLS = 1 << 25
# Keras's stand-in for log(0) (optax's log_epsilon): impossible transitions cost 1e5 each.
KERAS_LOG_EPSILON = -1e5


@register("ctc", aliases=("ctc_loss", "connectionist_temporal_classification"), class_labels=True)
def ctc(
    predictions: Array,
    labels: Labels,
    convention: Convention,
    /,
    *,
    input_lengths: Annotated[
        list[int] | None,
        PerSample(),
        Aliases(("output_length",)),
        Doc("time steps of each sample, 0 to T (default T for all): PyTorch's input_lengths, Keras's output_length"),
    ] = None,
    target_lengths: Annotated[
        list[int] | None,
        PerSample(),
        Aliases(("target_length",)),
        Doc(
            "labels of each sample, 0 to S (default: the labels before the first blank, the padding "
            "Keras counts): PyTorch's target_lengths, Keras's target_length"
        ),
    ] = None,
    blank: Annotated[int, Aliases(("mask_index",)), Doc("class index of the blank (Keras's mask_index)")] = 0,
    zero_infinity: Annotated[
        bool, OnlyUnder("torch"), Doc("a sample with no possible alignment scores 0 instead of being refused")
    ] = False,
) -> LossValues:
    """CTC loss: -log of the summed probability of every alignment of the labels with the time steps.

    Formula:
        alignments: the T_n steps emit classes whose collapse (repeats merged, then blanks
        removed) is the labels; loss_n = -log sum_alignments prod_t p_t(a_t)
        torch: p_t = exp(predictions), log-probabilities taken as given; reduction='mean' is
               mean_n(loss_n / max(L_n, 1)), L_n the target length, so `sum` is the sum of
               loss_n / max(L_n, 1) (what the mean averages; per_sample stays loss_n);
               no alignment: refused, or 0 with zero_infinity
        keras: p_t = softmax(predictions); mean_n(loss_n); log 0 is -1e5 as in Keras, so a sample
               with no alignment costs about 1e5 per impossible step, as Keras reports it;
               Keras 3.15 computes CTC in float32 whatever its loss dtype: float32 gives its
               number, float64 the exact one

    Shapes:
        predictions: (N, T, C), batch first (PyTorch's log_probs are (T, N, C): transpose them);
        torch: log-probabilities, keras: logits. labels: integer targets (N, S), padded at the
        end: with the blank when the target lengths are left to the default, with anything when
        target_lengths gives them; S <= T (a longer target has no alignment). At most 10,000 time
        steps, and the lattice N x T x (2 max(L) + 1) at most 2^25 cells.
        per_sample: (N,).

    Follows:
        torch/nn/functional.py ctc_loss (aten/src/ATen/native/LossCTC.cpp ctc_loss_cpu_template,
        ctc_loss_impl); keras/src/losses/losses.py CTC and ctc with keras/src/backend/numpy/nn.py
        ctc_loss (keras.ops.ctc_loss for input lengths and a blank other than 0).
    """
    samples, steps, classes = _check_batch(predictions, labels, blank)
    inputs = _input_lengths(input_lengths, samples, steps)
    targets = _target_lengths(target_lengths, labels, blank)
    _check_targets(labels, targets, classes, blank)
    longest = int(targets.max())
    cells = samples * steps * (2 * longest + 1)
    if cells > MAX_LATTICE_CELLS:
        raise LossInputError(
            "predictions",
            f"N x T x (2 max(L) + 1) = {samples} x {steps} x {2 * longest + 1} = {cells:,} lattice cells; "
            f"at most {MAX_LATTICE_CELLS:,} are computed (send fewer samples)",
        )
    if convention == "keras":
        return LossValues(_keras_ctc(predictions, labels, inputs, targets, blank, longest))
    values = _torch_ctc(predictions, labels[:, :longest], inputs, targets, blank)
    impossible = values == np.inf
    if impossible.any() and not zero_infinity:
        sample = int(np.argmax(impossible))
        raise LossInputError(
            "labels",
            f"no alignment of these {int(targets[sample])} labels fits the sample's {int(inputs[sample])} time steps "
            "(PyTorch's loss is inf); set zero_infinity to count it as 0",
            (sample,),
        )
    values = np.where(impossible, values.dtype.type(0), values)
    return LossValues(values, mean_divisor=np.maximum(targets, 1).astype(values.dtype))


def _check_batch(predictions: Array, labels: Labels, blank: int) -> tuple[int, int, int]:
    """N, T and C, once the predictions, labels and blank fit CTC and its bounds."""
    if predictions.ndim != 3:
        raise LossInputError(
            "predictions", f"must be (N, T, C): per-step class scores, batch first; got shape {list(predictions.shape)}"
        )
    samples, steps, classes = predictions.shape
    if labels.ndim != 2 or labels.shape[0] != samples:
        raise LossInputError(
            "labels", f"must be (N, S) = ({samples}, S) integer targets padded at the end, got {list(labels.shape)}"
        )
    if steps > MAX_TIME_STEPS:
        raise LossInputError("predictions", f"has {steps:,} time steps; at most {MAX_TIME_STEPS:,} are computed")
    if labels.shape[1] > steps:
        raise LossInputError(
            "labels",
            f"has S = {labels.shape[1]} columns for T = {steps} time steps; a target longer than T has no "
            "alignment: trim the padding to at most T columns",
        )
    if not 0 <= blank < classes:
        raise LossInputError("options.blank", f"must be a class index in [0, {classes - 1}], got {blank}")
    return samples, steps, classes


def _input_lengths(given: list[int] | None, samples: int, steps: int) -> Lengths:
    if given is None:
        return np.full(samples, steps, dtype=np.int32)
    lengths = np.asarray(given, dtype=np.int64)
    bad = (lengths < 0) | (lengths > steps)
    if bad.any():
        index = int(np.argmax(bad))
        raise LossInputError(
            "options.input_lengths", f"{int(lengths[index])} is not a length in [0, T = {steps}]", (index,)
        )
    return lengths.astype(np.int32)


def _target_lengths(given: list[int] | None, labels: Labels, blank: int) -> Lengths:
    """The given lengths, or each row's labels before its first blank (Keras counts the labels
    that are not the blank: the same number when the blanks all come last, checked here)."""
    width = labels.shape[1]
    if given is not None:
        lengths = np.asarray(given, dtype=np.int64)
        bad = (lengths < 0) | (lengths > width)
        if bad.any():
            index = int(np.argmax(bad))
            raise LossInputError(
                "options.target_lengths", f"{int(lengths[index])} is not a length in [0, S = {width}]", (index,)
            )
        return lengths.astype(np.int32)
    counted = np.logical_and.accumulate(labels != blank, axis=1)  # True up to each row's first blank
    after = (labels != blank) & ~counted
    if after.any():
        position = tuple(int(i) for i in np.argwhere(after)[0])
        raise LossInputError(
            "labels",
            f"label {int(labels[position])} follows the blank ({blank}) padding; pad only at the end of a row, "
            "or give target_lengths",
            position,
        )
    counts: Lengths = counted.sum(axis=1, dtype=np.int32)
    return counts


def _check_targets(labels: Labels, lengths: Lengths, classes: int, blank: int) -> None:
    """The labels within each target length are classes other than the blank."""
    within = np.arange(labels.shape[1]) < lengths[:, None]
    bad = within & ((labels < 0) | (labels >= classes) | (labels == blank))
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        label = int(labels[index])
        reason = "is the blank" if label == blank else f"is outside the classes [0, {classes - 1}]"
        raise LossInputError("labels", f"label {label} {reason}; a target is a sequence of non-blank classes", index)


def _torch_ctc(log_probs: Array, labels: Labels, inputs: Lengths, targets: Lengths, blank: int) -> Array:
    """ctc_loss_cpu_template over the batch: alpha over the extended labels (blank, l1, blank, l2,
    ..., blank), each cell log(e^(la1 - m) + e^(la2 - m) + e^(la3 - m)) + m + log p, in that order.
    Even states are blanks, odd state 2k + 1 is label k; a label is reached from two states back
    (la3) only when it differs from the label before it."""
    samples = log_probs.shape[0]
    dtype = log_probs.dtype.type
    neginf, zero = dtype(-np.inf), dtype(0)
    width = labels.shape[1]
    labels = np.where(np.arange(width) < targets[:, None], labels, blank)  # past the end: never read
    same = labels[:, 1:] == labels[:, :-1]  # la3 is -inf for label k + 1 when it repeats label k
    end_blank, end_label = np.full(samples, neginf), np.full(samples, neginf)

    def emissions(t: int) -> tuple[Array, Array]:
        step = log_probs[:, t, :]
        return step[:, blank : blank + 1], np.take_along_axis(step, labels, axis=1)

    def record(alpha: Array, t: int) -> None:
        """The two states a complete alignment ends in, for the samples whose last step is t."""
        ended = np.flatnonzero(inputs == t + 1)
        if ended.size:
            length = targets[ended]
            end_blank[ended] = alpha[ended, 2 * length]
            end_label[ended] = np.where(length > 0, alpha[ended, np.maximum(2 * length - 1, 0)], neginf)

    alpha = np.full((samples, 2 * width + 1), neginf)
    blank_p, label_p = emissions(0)
    alpha[:, 0] = blank_p[:, 0]
    if width:
        alpha[:, 1] = np.where(targets > 0, label_p[:, 0], neginf)
    record(alpha, 0)
    steps = int(inputs.max())
    if steps > 1:
        # Lattice-sized buffers: the alphas one and two states back (-inf where no transition),
        # their maximum and the sum of the exponentials.
        shifted1, shifted2 = np.full_like(alpha, neginf), np.full_like(alpha, neginf)
        top, summed = np.empty_like(alpha), np.empty_like(alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        for t in range(1, steps):
            shifted1[:, 0] = neginf
            shifted1[:, 1:] = alpha[:, :-1]
            shifted2[:, 3::2] = alpha[:, 1:-2:2]
            np.copyto(shifted2[:, 3::2], neginf, where=same)
            np.maximum(alpha, shifted1, out=top)
            np.maximum(top, shifted2, out=top)
            np.copyto(top, zero, where=top == neginf)  # cannot do -inf - -inf
            np.exp(np.subtract(alpha, top, out=summed), out=summed)
            summed += np.exp(np.subtract(shifted1, top, out=shifted1), out=shifted1)
            odd = shifted2[:, 3::2]  # the even states and state 1 stay -inf: e^-inf adds 0
            summed[:, 3::2] += np.exp(np.subtract(odd, top[:, 3::2], out=odd), out=odd)
            np.log(summed, out=alpha)
            alpha += top
            blank_p, label_p = emissions(t)
            alpha[:, 0::2] += blank_p
            alpha[:, 1::2] += label_p
            record(alpha, t)
        peak = np.maximum(end_blank, end_label)
        peak = np.where(peak == neginf, zero, peak)
        log_likelihood = np.log(np.exp(end_blank - peak) + np.exp(end_label - peak)) + peak
    # No input steps: PyTorch's likelihood is 1 for an empty target and 0 otherwise.
    log_likelihood = np.where(inputs == 0, np.where(targets == 0, zero, neginf), log_likelihood)
    values: Array = -log_likelihood
    return values


def _keras_ctc(logits: Array, labels: Labels, inputs: Lengths, targets: Lengths, blank: int, longest: int) -> Array:
    """keras.ops.ctc_loss (numpy backend) over the batch: `phi` (after a blank, L + 1 states) and
    `emit` (after label n, L states) updated per step, log 0 as -1e5, padded steps keeping the
    state; L the longest target, the columns past it never reaching the states read."""
    samples, _, classes = logits.shape
    dtype = logits.dtype.type
    epsilon = dtype(KERAS_LOG_EPSILON)
    # Keras's repeat[n]: label n equals label n + 1 (the row's padding included; 0 past the last column).
    repeat = np.zeros((samples, longest), dtype=logits.dtype)
    following = min(longest, labels.shape[1] - 1)
    repeat[:, :following] = labels[:, :following] == labels[:, 1 : following + 1]
    after_repeat = epsilon * repeat  # the epsilon step emit -> phi, except between repeated labels
    after_other = epsilon * (1 - repeat)  # the blank step emit -> phi, only between repeated labels
    del repeat
    emitted = np.clip(labels[:, :longest], 0, classes - 1)  # past a target's end: never read
    phi = np.full((samples, longest + 1), epsilon)
    phi[:, 0] = 0
    emit = np.full((samples, longest), epsilon)
    reached, next_phi = np.empty_like(phi), np.empty_like(phi)
    next_emit, scratch = np.empty_like(emit), np.empty_like(emit)
    for t in range(int(inputs.max())):
        log_p = log_softmax(logits[:, t, :], axis=-1)
        emit_p = np.take_along_axis(log_p, emitted, axis=1)
        blank_p = log_p[:, blank : blank + 1]
        del log_p
        reached[:, 0] = phi[:, 0]
        np.logaddexp(phi[:, 1:], np.add(emit, after_repeat, out=scratch), out=reached[:, 1:])
        np.logaddexp(np.add(reached[:, :-1], emit_p, out=next_emit), np.add(emit, emit_p, out=emit_p), out=next_emit)
        np.add(reached, blank_p, out=next_phi)
        np.add(emit, blank_p, out=scratch)
        scratch += after_other
        np.logaddexp(next_phi[:, 1:], scratch, out=next_phi[:, 1:])
        active = (inputs > t)[:, None]
        np.copyto(emit, next_emit, where=active)
        np.copyto(phi, next_phi, where=active)
    phi[:, 1:] = np.logaddexp(phi[:, 1:], emit)
    values: Array = -phi[np.arange(samples), targets]
    return values
