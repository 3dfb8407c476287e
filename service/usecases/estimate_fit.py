"""The calibration an estimate uses (docs/estimates.md, "How the calibration is fitted"): fitted
on the model's most recent joined pairs once enough have joined, and again each time about a
tenth of its window has turned over, after the log that joined them has committed.

The rule (`fit_due`), for a model whose `estimate.calibration` is temperature or isotonic, with
W its `estimate.window` and `joined` the pairs it has joined in all:
- the first fit once joined >= min(W, FIRST_FIT_PAIRS);
- a refit once joined has grown by max(1, W // REFIT_FRACTION) since the pairs of the kept fit
  were read (the fit's `joined`), about 10 % of the window replaced by newer pairs;
- a refit at the first log after the model's configuration was replaced (its `updated_at` is
  not the fit's `configured_at`), once the first fit's count is reached: the calibration, the
  window, the convention or the estimated losses may have changed.

The fit reads at most W pairs, the most recent by prediction time among those that kept their
payloads (keep_pairs), and the predictions as the estimated losses read them (their
`from_logits`); pairs whose class index the first estimated loss ignores (its `ignore_index`)
are left out, as that loss scores none of them. A fit the engine refuses (isotonic on several
classes, soft labels, weights summing to 0, an empty window) is kept with `parameters` null
and the engine's reason in `error`: the estimates then use the predictions' own distribution,
and the next refit tries again. Nothing of it fails the request that triggered it: a store failure is logged as a
warning and the fit is tried again at the next log.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.engine import LossInputError, resolve
from service.engine.conventions import TORCH_IGNORE_INDEX
from service.engine.recalibration import fit_isotonic, fit_temperature
from service.store import Logged, Model, Store, StoreFailureError, UnknownModelError
from service.store.fits import RecentPairs
from service.usecases import estimates

log = logging.getLogger("service.api")

# The first fit waits for this many joined pairs (or the whole window, if it is smaller).
FIRST_FIT_PAIRS = 100
# A refit follows once joined has grown by this fraction of the window (at least one pair).
REFIT_FRACTION = 10


def fit_due(model: Model) -> bool:
    """Whether the model's calibration is due to be fitted (see the module for the rule)."""
    estimate = model.config.get("estimate")
    if estimate is None or estimate["calibration"] == "none":
        return False
    window = int(estimate["window"])
    if model.joined < min(window, FIRST_FIT_PAIRS):
        return False
    fit = model.estimate_fit
    if fit is None or fit.get("configured_at") != model.updated_at:
        return True
    return bool(model.joined - int(fit["joined"]) >= max(1, window // REFIT_FRACTION))


def refit(store: Store, name: str, now: float) -> dict[str, Any] | None:
    """Fit the model's calibration on its most recent pairs and keep it, if it is due (`fit_due`
    on the model as read with the pairs); the fit kept, or None (not due, the model is gone, or a
    fit read at more joined pairs was kept meanwhile). The store's failures are raised."""
    model = store.model(name)
    if model is None or not fit_due(model):
        return None
    pairs = store.recent_pairs(name, int(model.config["estimate"]["window"]))
    if pairs is None or not fit_due(pairs.model):
        return None
    fit = fitted(pairs, now)
    try:
        saved = store.save_fit(name, fit)
    except UnknownModelError:  # removed since
        return None
    return fit if saved else None


def fitted(pairs: RecentPairs, now: float) -> dict[str, Any]:
    """The calibration of `pairs.model`'s configuration fitted on `pairs`, as the model keeps it:
    `parameters` the engine's fit (`as_dict`), or null with the engine's reason in `error`."""
    model = pairs.model
    estimate = model.config["estimate"]
    calibration = estimate["calibration"]
    parameters, error = None, None
    predictions, labels, weights = _counted(model, pairs)
    try:
        parameters = _fit(calibration, model, predictions, labels, weights, len(pairs)).as_dict()
    except (LossInputError, ValueError, ArithmeticError) as exc:  # every refusal of the engine
        error = str(exc)
    return {
        "calibration": calibration,
        "parameters": parameters,
        "error": error,
        "pairs": len(weights),
        "window": {"from": pairs.first, "to": pairs.last},
        "fitted_at": now,
        "joined": model.joined,
        "configured_at": model.updated_at,
    }


Floats = NDArray[np.float64]


def _counted(model: Model, pairs: RecentPairs) -> tuple[Floats, Floats, Floats]:
    """The pairs' predictions, labels and weights, less the pairs whose class index the first
    estimated loss ignores (`ignore_index`, PyTorch's -100 by default): it scores none of them."""
    predictions, labels, weights = pairs.predictions, pairs.labels, pairs.weights
    if predictions.ndim == 2 and predictions.shape[1] > 1 and labels.shape == (len(pairs), 1):
        labels = labels.reshape(-1)  # class indices kept as one column
    ignored = _ignored_class(model.config, model.config["estimate"]["losses"][0])
    if ignored is None or labels.ndim != 1 or predictions.ndim != 2 or predictions.shape[1] < 2:
        return predictions, labels, weights
    kept = labels != ignored
    return predictions[kept], labels[kept], weights[kept]


def _ignored_class(config: dict[str, Any], position: int) -> int | None:
    """The class index the loss at `position` ignores, where it takes one (`ignore_index`)."""
    call = config["losses"][position]
    try:
        bound = resolve(call["loss"]).bind(call["options"], config["convention"])
    except LossInputError:  # stored configurations were bound when they were stored
        return None
    if "ignore_index" not in bound:
        return None
    ignored = bound["ignore_index"]
    return TORCH_IGNORE_INDEX if ignored is None and config["convention"] == "torch" else ignored


def _fit(calibration: str, model: Model, predictions: Floats, labels: Floats, weights: Floats, read: int) -> Any:
    """The engine's fit of `calibration` on the pairs counted of the `read` in the window
    (LossInputError where it refuses them, or there are none)."""
    config = model.config
    logits = estimates.from_logits(config, config["estimate"]["losses"][0])
    if not len(weights):
        if read:  # every pair read was dropped by `_counted`: its label is the class ignored
            ignored = _ignored_class(config, config["estimate"]["losses"][0])
            reason = f"every label of the window's {read} pairs is the class ignored ({ignored}): the window is empty"
            raise LossInputError("labels", reason)
        raise LossInputError("predictions", "no joined pair kept its payloads (keep_pairs): the window is empty")
    if calibration == "isotonic":
        return fit_isotonic(predictions, labels, from_logits=logits, sample_weight=weights)
    convention = config["convention"]
    return fit_temperature(predictions, labels, from_logits=logits, convention=convention, sample_weight=weights)


def after_log(store: Store, logged: Logged[Any], now: float) -> None:
    """Refit, where due, each model a committed log joined pairs for: the model logged and the
    followers its labels went to (labels_from). Never raises: a failure is logged as a warning."""
    for each in (logged, *logged.followers):
        model = each.model
        if not each.pairs.ids or not fit_due(model):
            continue
        try:
            refit(store, model.name, now)
        except StoreFailureError as exc:
            log.warning("estimate fit of %s not kept: %s; tried again at the next log", model.name, exc)
        except Exception:  # a fit must never fail the log that triggered it
            log.warning("estimate fit of model %s failed; tried again at the next log", model.name, exc_info=True)
