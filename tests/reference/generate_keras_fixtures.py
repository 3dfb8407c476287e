"""Regenerate tests/fixtures/keras_reference.json from Keras 3 itself (JAX backend, CPU).

Keras is not a dependency of the project; run this in a separate environment:

    python -m venv /tmp/k && /tmp/k/bin/pip install keras jax scipy numpy
    KERAS_BACKEND=jax JAX_ENABLE_X64=1 /tmp/k/bin/python tests/reference/generate_keras_fixtures.py

Per-sample values are the loss with reduction=None (sample weights applied, as Keras does);
means are Keras's default reduction, sum_over_batch_size.

The losses before Dice and Tversky run in float32 only, Keras's default dtype: with
dtype="float64", Keras 3.15 on JAX was seen to return some last-axis means (MeanAbsoluteError,
after a weighted call to another loss) at float32 precision, so their float64 is checked against
the naive float64 formulas (tests/reference/naive.py). Dice and Tversky also run in float64.
CTC runs in float32 only: Keras 3.15 computes it in float32 whatever the loss dtype (its float64
answer is the float32 one, cast), so its float64 is checked against the naive float64 sum over
alignments and PyTorch's float64 (tests/engine/test_engine_ctc.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras.src.losses.losses import LossFunctionWrapper  # not exported by keras.losses

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "keras_reference.json"


def main() -> None:
    rng = np.random.default_rng(20261122)
    n, c = 12, 5
    logits = rng.normal(0, 3, (n, c))
    raw = rng.random((n, c)) + 0.01
    unnormalised = np.clip(raw * 1.5, 0, 1)
    unnormalised[0, 0] = 0.0
    probabilities = raw / raw.sum(1, keepdims=True)
    one_hot = np.eye(c)[rng.integers(0, c, n)]
    soft = probabilities[::-1].copy()
    sparse = rng.integers(0, c, n)
    binary = rng.integers(0, 2, (n, 3)).astype(float)
    binary_p = rng.random((n, 3))
    binary_p[0, 0], binary_p[1, 1] = 0.0, 1.0
    binary_logits = rng.normal(0, 4, (n, 3))
    values, targets = rng.normal(0, 2, (n, 4)), rng.normal(0, 2, (n, 4))
    positive, counts = rng.uniform(0, 5, (n, 4)), rng.poisson(2.0, (n, 4)).astype(float)
    weights = rng.uniform(0, 2, n)
    seq_logits, seq_labels = rng.normal(0, 2, (4, 3, c)), rng.integers(0, c, (4, 3))

    losses = keras.losses
    specs: list[tuple[str, str, dict[str, Any], Any, np.ndarray, np.ndarray, Any, int]] = [
        # (our name, tag, our options, keras factory(dtype), predictions, labels, sample_weight, terms)
        (
            "binary_crossentropy",
            "probabilities",
            {},
            lambda d: losses.BinaryCrossentropy(dtype=d, reduction=None),
            binary_p,
            binary,
            None,
            3,
        ),
        (
            "binary_crossentropy",
            "logits-smooth",
            {"from_logits": True, "label_smoothing": 0.2},
            lambda d: losses.BinaryCrossentropy(from_logits=True, label_smoothing=0.2, dtype=d, reduction=None),
            binary_logits,
            binary,
            None,
            3,
        ),
        (
            "categorical_crossentropy",
            "unnormalised",
            {},
            lambda d: losses.CategoricalCrossentropy(dtype=d, reduction=None),
            unnormalised,
            one_hot,
            None,
            c,
        ),
        (
            "categorical_crossentropy",
            "logits-smooth",
            {"from_logits": True, "label_smoothing": 0.1},
            lambda d: losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1, dtype=d, reduction=None),
            logits,
            soft,
            None,
            c,
        ),
        (
            "sparse_categorical_crossentropy",
            "probabilities-weighted",
            {},
            lambda d: losses.SparseCategoricalCrossentropy(dtype=d, reduction=None),
            probabilities,
            sparse,
            weights,
            1,
        ),
        (
            "sparse_categorical_crossentropy",
            "logits-ignore",
            {"from_logits": True, "ignore_class": int(sparse[0])},
            lambda d: losses.SparseCategoricalCrossentropy(
                from_logits=True, ignore_class=int(sparse[0]), dtype=d, reduction=None
            ),
            logits,
            sparse,
            None,
            1,
        ),
        (
            "sparse_categorical_crossentropy",
            "sequence",
            {"from_logits": True},
            lambda d: losses.SparseCategoricalCrossentropy(from_logits=True, dtype=d, reduction=None),
            seq_logits,
            seq_labels,
            None,
            1,
        ),
        (
            "mean_squared_error",
            "weighted",
            {},
            lambda d: losses.MeanSquaredError(dtype=d, reduction=None),
            values,
            targets,
            weights,
            4,
        ),
        (
            "mean_absolute_error",
            "default",
            {},
            lambda d: losses.MeanAbsoluteError(dtype=d, reduction=None),
            values,
            targets,
            None,
            4,
        ),
        (
            "mean_absolute_percentage_error",
            "default",
            {},
            lambda d: losses.MeanAbsolutePercentageError(dtype=d, reduction=None),
            values,
            targets,
            None,
            4,
        ),
        (
            "mean_squared_logarithmic_error",
            "default",
            {},
            lambda d: losses.MeanSquaredLogarithmicError(dtype=d, reduction=None),
            positive,
            counts,
            None,
            4,
        ),
        (
            "huber",
            "delta",
            {"delta": 0.8},
            lambda d: losses.Huber(delta=0.8, dtype=d, reduction=None),
            values,
            targets,
            None,
            4,
        ),
        ("log_cosh", "default", {}, lambda d: losses.LogCosh(dtype=d, reduction=None), values, targets, None, 4),
        ("poisson", "default", {}, lambda d: losses.Poisson(dtype=d, reduction=None), positive, counts, None, 4),
        (
            "kl_divergence",
            "default",
            {},
            lambda d: losses.KLDivergence(dtype=d, reduction=None),
            probabilities,
            soft,
            None,
            c,
        ),
        (
            "cosine_similarity",
            "default",
            {},
            lambda d: losses.CosineSimilarity(dtype=d, reduction=None),
            values,
            targets,
            None,
            4,
        ),
        ("hinge", "binary", {}, lambda d: losses.Hinge(dtype=d, reduction=None), values[:, :3], binary, None, 3),
        (
            "squared_hinge",
            "binary",
            {},
            lambda d: losses.SquaredHinge(dtype=d, reduction=None),
            values[:, :3],
            binary,
            None,
            3,
        ),
        (
            "categorical_hinge",
            "default",
            {},
            lambda d: losses.CategoricalHinge(dtype=d, reduction=None),
            logits,
            one_hot,
            None,
            c,
        ),
        (
            "binary_focal_crossentropy",
            "balanced-logits",
            {"apply_class_balancing": True, "alpha": 0.3, "gamma": 1.5, "from_logits": True},
            lambda d: losses.BinaryFocalCrossentropy(
                apply_class_balancing=True, alpha=0.3, gamma=1.5, from_logits=True, dtype=d, reduction=None
            ),
            binary_logits,
            binary,
            None,
            3,
        ),
        (
            "categorical_focal_crossentropy",
            "default",
            {},
            lambda d: losses.CategoricalFocalCrossentropy(dtype=d, reduction=None),
            probabilities,
            one_hot,
            None,
            c,
        ),
        # issue 34: generalized cross-entropy and circle (drawn after every case above, so their inputs stay put)
        *keras_only_issue_34(rng, c),
    ]
    # Drawn after every input above, so the earlier cases keep their numbers. Dice and Tversky sum
    # each sample over every axis but the first: Keras's axis=(1, ..., ndim - 1). Their float64 runs
    # are checked to 1e-12 (JAX_ENABLE_X64 keeps the sums in float64).
    masks, soft_masks = rng.integers(0, 2, (n, 4, 3)).astype(float), rng.random((n, 4, 3))
    mask_p = rng.random((n, 4, 3))
    mask_p[0] = 0.0
    masks[0] = 0.0
    overlap_weights = rng.uniform(0, 2, n)
    overlap: list[tuple[str, str, dict[str, Any], Any, np.ndarray, np.ndarray, Any, int]] = [
        (
            "dice",
            "2d",
            {},
            lambda d: losses.Dice(axis=(1,), dtype=d, reduction=None),
            mask_p[:, 0],
            masks[:, 0],
            None,
            3,
        ),
        (
            "dice",
            "3d-soft-weighted",
            {},
            lambda d: losses.Dice(axis=(1, 2), dtype=d, reduction=None),
            mask_p,
            soft_masks,
            overlap_weights,
            12,
        ),
        (
            "tversky",
            "default-3d",
            {},
            lambda d: losses.Tversky(axis=(1, 2), dtype=d, reduction=None),
            mask_p,
            masks,
            None,
            12,
        ),
        (
            "tversky",
            "alpha-beta-weighted",
            {"alpha": 0.3, "beta": 0.7},
            lambda d: losses.Tversky(alpha=0.3, beta=0.7, axis=(1,), dtype=d, reduction=None),
            mask_p[:, 1],
            soft_masks[:, 1],
            overlap_weights,
            3,
        ),
    ]
    records = []
    runs = [(spec, ("float32",)) for spec in specs] + [(spec, ("float32", "float64")) for spec in overlap]
    runs += [(spec, ("float32",)) for spec in ctc_cases(rng)]
    for (name, tag, options, factory, predictions, labels, sample_weight, terms), dtypes in runs:
        for dtype in dtypes:
            loss = factory(dtype)
            y_pred = predictions.astype(dtype)
            y_true = labels if labels.dtype.kind == "i" else labels.astype(dtype)
            sw = None if sample_weight is None else sample_weight.astype(dtype)
            per_sample = np.asarray(loss(y_true, y_pred, sample_weight=sw))
            loss.reduction = "sum_over_batch_size"
            mean = float(np.asarray(loss(y_true, y_pred, sample_weight=sw)))
            records.append(
                {
                    "id": f"{name}-{tag}-{dtype}",
                    "loss": name,
                    "options": options,
                    "dtype": dtype,
                    "terms": terms,
                    "predictions": y_pred.tolist(),
                    "labels": y_true.tolist(),
                    "sample_weight": None if sw is None else sw.tolist(),
                    "expected": {"per_sample": per_sample.astype(np.float64).tolist(), "mean": mean},
                }
            )
    meta = {"keras": keras.__version__, "backend": keras.backend.backend()}
    FIXTURE.write_text(json.dumps({**meta, "cases": records}, indent=1) + "\n")
    print(f"wrote {len(records)} cases to {FIXTURE} ({meta})")


def keras_only_issue_34(
    rng: np.random.Generator, c: int
) -> list[tuple[str, str, dict[str, Any], Any, Any, Any, Any, int]]:
    """Cases of issue 34 (categorical_generalized_cross_entropy, circle), from draws made after all others."""
    losses = keras.losses
    n = 12  # tests/engine/test_engine_nd.py lays the 12 rows out as (3, 4) and (2, 3, 2)
    raw = rng.random((n, c)) + 0.01
    probabilities = raw / raw.sum(1, keepdims=True)
    probabilities[0, 0] = 0.0  # a zero probability: 0^q = 0
    unnormalised = rng.random((n, c))  # taken as given: Keras does not renormalise
    labels = rng.integers(0, c, n)
    labels[0] = 0
    weights = rng.uniform(0, 2, n)
    return [
        (
            "categorical_generalized_cross_entropy",
            "default",
            {},
            lambda d: losses.CategoricalGeneralizedCrossEntropy(dtype=d, reduction=None),
            probabilities,
            labels,
            None,
            1,
        ),
        (
            "categorical_generalized_cross_entropy",
            "q-weighted",
            {"q": 0.2},
            lambda d: losses.CategoricalGeneralizedCrossEntropy(q=0.2, dtype=d, reduction=None),
            probabilities,
            labels,
            weights,
            1,
        ),
        (
            "categorical_generalized_cross_entropy",
            "unnormalised",
            {"q": 0.9},
            lambda d: losses.CategoricalGeneralizedCrossEntropy(q=0.9, dtype=d, reduction=None),
            unnormalised,
            labels,
            None,
            1,
        ),
        *circle_cases(rng),
    ]


def circle_cases(rng: np.random.Generator) -> list[tuple[str, str, dict[str, Any], Any, Any, Any, Any, int]]:
    """Circle loss on 12 L2-normalised embeddings; class 3 has one member (no positive: masked)."""
    losses = keras.losses
    embeddings = rng.normal(0, 1, (12, 6))
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    classes = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 0, 1])
    weights = rng.uniform(0, 2, 12)
    return [
        ("circle", "default", {}, lambda d: losses.Circle(dtype=d, reduction=None), embeddings, classes, None, 12),
        (
            "circle",
            "gamma-margin-weighted",
            {"gamma": 16.0, "margin": 0.25},
            lambda d: losses.Circle(gamma=16.0, margin=0.25, dtype=d, reduction=None),
            embeddings,
            classes,
            weights,
            12,
        ),
        (
            "circle",
            "keep-diagonal",
            {"remove_diagonal": False},
            lambda d: losses.Circle(remove_diagonal=False, dtype=d, reduction=None),
            embeddings,
            classes,
            None,
            12,
        ),
    ]


def ctc_cases(rng: np.random.Generator) -> list[tuple[str, str, dict[str, Any], Any, Any, Any, Any, int]]:
    """CTC on 12 sequences of 10 steps over 5 classes, drawn after every other case: keras.losses.CTC
    (blank 0, lengths from the padding), and keras.ops.ctc_loss with input lengths and blank 2."""
    losses = keras.losses
    n, t, c = 12, 10, 5
    logits = rng.normal(0, 2, (n, t, c))
    lengths = rng.integers(0, 6, n)
    lengths[0] = 5
    labels = np.where(np.arange(6) < lengths[:, None], rng.integers(1, c, (n, 6)), 0)
    labels[0, :5] = [2, 2, 3, 3, 3]  # repeats: 8 of the 10 steps at least
    impossible = labels.copy()
    impossible[1] = [4, 4, 4, 4, 4, 4]  # 11 steps at least: Keras's -1e5 for log 0 gives ~1e5
    weights = rng.uniform(0, 2, n)
    inputs = rng.integers(6, t + 1, n)
    targets = rng.integers(0, 4, n)
    other = rng.choice([0, 1, 3, 4], (n, 6))  # blank 2; past each target its classes are ignored

    def ops_ctc(d: str) -> Any:
        def fn(y_true: Any, y_pred: Any) -> Any:
            return keras.ops.ctc_loss(y_true, y_pred, targets, inputs, mask_index=2)

        return LossFunctionWrapper(fn, dtype=d, reduction=None)

    options = {"blank": 2, "input_lengths": inputs.tolist(), "target_lengths": targets.tolist()}
    return [
        ("ctc", "default", {}, lambda d: losses.CTC(dtype=d, reduction=None), logits, labels, None, 1),
        ("ctc", "weighted", {}, lambda d: losses.CTC(dtype=d, reduction=None), logits, labels, weights, 1),
        ("ctc", "impossible", {}, lambda d: losses.CTC(dtype=d, reduction=None), logits, impossible, None, 1),
        ("ctc", "ops-lengths-blank-2", options, ops_ctc, logits, other, None, 1),
    ]


if __name__ == "__main__":
    main()
