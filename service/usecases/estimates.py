"""A model's losses estimated before their labels arrive (docs/estimates.md): which configured
losses are estimated, the belief about each prediction's label (its own distribution, or that
recalibrated by the model's fit), and each prediction's expected loss under it.

A pair's estimate is made when it joins, under the belief the model held before its label came
(the fit as it stood in the join's transaction), and kept beside its losses; a pending
prediction's is made when the history is read, under the model's current fit. The engine
computes both (`service.engine.expected_loss`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from service.engine import FRAMEWORKS, ExpectedLoss, LossInputError, expected_loss, resolve
from service.engine.recalibration import Isotonic, recalibration_from_dict
from service.store import Model
from service.store.history import MOMENTS
from service.usecases.errors import InvalidInputError

_log = logging.getLogger(__name__)

# A batch is searched for the predictions the engine refuses until this many are found; then each
# part still refused is left out whole (its good rows with it).
REFUSED_ROWS = 16


def checked_estimate(request: Any, config: dict[str, Any]) -> dict[str, Any] | None:
    """The `estimate` of a validated configuration request, checked against the rest of its
    configuration `config` (losses as stored, convention, keep_pairs): each estimated loss has
    an expected loss; a fit needs the pairs kept and one reading of the predictions."""
    if request is None:
        return None
    estimate: dict[str, Any] = request.model_dump()
    if config["convention"] not in FRAMEWORKS:
        raise InvalidInputError(
            "estimate",
            f"needs the keras or pytorch convention (an expected loss is one of theirs), not {config['convention']}",
        )
    losses = config["losses"]
    given = estimate["losses"]
    positions = list(range(len(losses))) if given is None else given
    for index, position in enumerate(positions):
        field, at = ("losses", [position]) if given is None else ("estimate.losses", [index])
        if position >= len(losses):
            raise InvalidInputError(field, f"names no configured loss (there are {len(losses)})", at)
        if positions.index(position) != index:
            raise InvalidInputError(field, f"repeats the loss at estimate.losses[{positions.index(position)}]", at)
        spec = resolve(losses[position]["loss"])
        if spec.expected is None:
            reason = f"{spec.name} has no expected loss (it does not score a predicted class)"
            if given is None:
                raise InvalidInputError(
                    f"losses.{position}.loss", f"{reason}; name the losses to estimate in estimate.losses"
                )
            raise InvalidInputError(field, reason, at)
    if estimate["calibration"] != "none":
        if not config["keep_pairs"]:
            raise InvalidInputError(
                "estimate.calibration",
                "needs keep_pairs: true (the fit reads the predictions and labels of the most recent joined pairs)",
            )
        links = {from_logits(config, position) for position in positions}
        if len(links) > 1:
            raise InvalidInputError(
                "estimate.calibration",
                "the estimated losses differ in from_logits: one fit reads the predictions one way",
            )
    estimate["losses"] = positions
    return estimate


def estimated(model: Model) -> list[int]:
    """The positions of the model's estimated losses (none without `estimate`)."""
    estimate = model.config.get("estimate")
    return [] if estimate is None else list(estimate["losses"])


def from_logits(config: dict[str, Any], position: int) -> bool:
    """Whether the loss at `position` reads the predictions as logits: always for a loss that takes
    nothing else (log-probabilities are logits to a softmax), else as its bound option says."""
    call = config["losses"][position]
    spec = resolve(call["loss"])
    if spec.reads_logits:
        return True
    try:
        bound = spec.bind(call["options"], config["convention"])
    except LossInputError:  # stored configurations were bound when they were stored
        return False
    return bool(bound.get("from_logits", False))


def belief(model: Model, predictions: np.ndarray[Any, Any]) -> np.ndarray[Any, Any] | None:
    """The belief about the labels of `predictions` under the model's fit: None (their own
    distribution) while `calibration` is "none", before the first fit of the configured
    calibration (a re-PUT that changes it leaves the other's fit unused), or where a fit failed."""
    estimate, fit = model.config.get("estimate"), model.estimate_fit
    if estimate is None or estimate["calibration"] == "none" or fit is None or fit.get("parameters") is None:
        return None
    if fit.get("calibration") != estimate["calibration"]:
        return None
    recalibration = recalibration_from_dict(fit["parameters"])
    logits = from_logits(model.config, estimate["losses"][0])
    if isinstance(recalibration, Isotonic):
        return recalibration.apply(predictions, from_logits=logits)
    return recalibration.apply(predictions, from_logits=logits, convention=model.config["convention"])


def expected_losses(
    model: Model, predictions: np.ndarray[Any, Any], weights: np.ndarray[Any, Any] | None = None
) -> dict[int, ExpectedLoss]:
    """Each estimated loss's moments for `predictions` (rows as stored), by its position, under
    the model's belief; `weights`: the labels' sample weights where they are known."""
    positions = estimated(model)
    if not positions or not len(predictions):
        return {}
    config = model.config
    q = belief(model, predictions)
    return {
        position: expected_loss(
            config["losses"][position]["loss"],
            predictions,
            options=config["losses"][position]["options"],
            convention=config["convention"],
            dtype=config["dtype"],
            q=q,
            sample_weight=weights,
        )
        for position in positions
    }


def moments(expected: ExpectedLoss) -> np.ndarray[Any, Any]:
    """The five moments of each sample as the store keeps them: (N, 5) float64, in the order
    mean, variance, denominator, denominator variance, covariance."""
    return np.stack(
        [
            expected.mean,
            expected.variance,
            expected.denominator,
            expected.denominator_variance,
            expected.covariance,
        ],
        axis=1,
    ).astype(np.float64)


def estimable_parts(
    model: Model,
    predictions: np.ndarray[Any, Any],
    part: np.ndarray[Any, Any],
    refused: list[LossInputError],
    weights: np.ndarray[Any, Any] | None = None,
) -> Iterator[tuple[np.ndarray[Any, Any], dict[int, ExpectedLoss]]]:
    """The rows `part` of `predictions` (with their `weights`) estimated, in parts: a part the
    engine refuses is halved until the rows it refuses stand alone (each into `refused`), so a
    prediction it cannot estimate (a probability outside [0, 1], a loss not finite for a class
    the label is not) leaves the others estimated. Past REFUSED_ROWS refused rows a refused part
    is left out whole: k such rows cost at most O(min(k, REFUSED_ROWS) log n) more evaluations."""
    try:
        yield part, expected_losses(model, predictions[part], None if weights is None else weights[part])
    except LossInputError as exc:
        if len(part) == 1 or len(refused) >= REFUSED_ROWS:
            refused.append(exc)
            return
        half = len(part) // 2
        yield from estimable_parts(model, predictions, part[:half], refused, weights)
        yield from estimable_parts(model, predictions, part[half:], refused, weights)


def pair_moments(
    model: Model, predictions: np.ndarray[Any, Any], weights: np.ndarray[Any, Any] | None
) -> dict[int, np.ndarray[Any, Any]]:
    """The moments each joining pair keeps, per estimated loss (by position): its predictions'
    expected loss under the model's belief as it stands before their labels count, with the
    labels' sample weights. A pair the engine cannot estimate (a loss not finite for a class the
    belief gives weight to) keeps NaN, which no total counts, and the join goes on: the losses
    themselves are exact, and the other pairs of the batch keep theirs (`estimable_parts`)."""
    kept = {position: np.full((len(predictions), len(MOMENTS)), np.nan) for position in estimated(model)}
    if not kept or not len(predictions):
        return {}
    refused: list[LossInputError] = []
    for part, found in estimable_parts(model, predictions, np.arange(len(predictions)), refused, weights):
        for position, expected in found.items():
            kept[position][part] = moments(expected)
    if refused:
        _log.warning("model %s: joining pairs with no expected loss, the first: %s", model.name, refused[0])
    return kept
