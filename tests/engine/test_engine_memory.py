"""The engine's memory bound (`working_bytes`), measured for every loss: the request budget rests on it."""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import pytest

from service.engine import LossInputError, catalogue, compute, working_bytes

N, C = 2000, 40


def _inputs(name: str, class_labels: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Valid float64 predictions and labels of about N x C numbers for `name`."""
    signs = np.where(rng.random((N, C)) > 0.5, 1.0, -1.0)
    probabilities = rng.random((N, C)) * 0.98 + 0.01
    if name in ("soft_margin", "hinge_embedding"):
        return probabilities, signs
    if name == "triplet_margin":
        return probabilities, rng.random((N, 2, C))
    if name == "cosine_embedding":
        return rng.random((N, 2, C)), signs[:, 0]
    if name == "margin_ranking":
        return rng.random((N, C, 2)), signs
    if name == "gaussian_nll":
        return rng.random((N, C, 2)) + 0.1, rng.random((N, C))
    if name == "crps_gaussian":  # forecasts [mean, std]
        return rng.random((N, 2)), rng.normal(0, 1, N)
    if name == "crps_ensemble":
        return rng.normal(0, 1, (N, C)), rng.normal(0, 1, N)
    if name == "multilabel_margin":  # up to C / 2 targets per row, then the -1 padding
        targets = np.argsort(rng.random((N, C)), axis=1)
        return probabilities, np.where(np.arange(C) < rng.integers(0, C // 2, (N, 1)), targets, -1)
    if name == "ctc":  # two classes: the lattice is at its widest against the predictions
        steps = C // 2  # ten repeated labels (1, 1, ...) fit twenty steps with blanks between them
        return rng.normal(0, 1, (N, steps, 2)), np.tile(np.arange(steps) < steps // 2, (N, 1)).astype(np.intp)
    if name == "gamma_deviance":
        return probabilities, probabilities[::-1]
    if name == "hamming":
        return (signs > 0).astype(float), (probabilities > 0.3).astype(float)
    if name in ("brier_score", "log_loss"):
        return probabilities[:, 0], (signs[:, 0] > 0).astype(float)
    if class_labels:
        return probabilities, rng.integers(0, C, N)
    return probabilities, (signs > 0).astype(float)


@pytest.mark.parametrize("name", [spec.name for spec in catalogue()])
def test_no_loss_allocates_more_than_working_bytes(name: str) -> None:
    spec = next(spec for spec in catalogue() if spec.name == name)
    rng = np.random.default_rng(3)
    # float64 inputs, as JSON bodies arrive: in float32 the conversion copies count too.
    predictions, labels = _inputs(name, spec.class_labels, rng)
    measured = 0
    for convention, dtype, logits in itertools.product(("keras", "torch"), ("float64", "float32"), (False, True)):
        options = {"from_logits": True} if logits else {}
        try:  # once untraced: a first call also allocates what lasts (caches, lazy imports)
            compute(name, predictions[:8], labels[:8], options=options, dtype=dtype, convention=convention)  # type: ignore[arg-type]
        except LossInputError:
            continue  # an option this loss or convention does not take
        tracemalloc.start()
        try:
            compute(
                name, predictions, labels, options=options, sample_weight=np.ones(N), dtype=dtype, convention=convention
            )  # type: ignore[arg-type]
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        measured += 1
        assert peak <= working_bytes(predictions.size, dtype), (convention, dtype, logits, peak)  # type: ignore[arg-type]
    assert measured >= 2  # at least both dtypes of one convention were measured


def test_working_bytes_scales_with_elements_and_itemsize() -> None:
    assert working_bytes(1000, "float64") == 2 * working_bytes(1000, "float32")
    assert working_bytes(2000) == 2 * working_bytes(1000)
