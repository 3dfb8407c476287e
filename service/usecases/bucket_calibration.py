"""The calibration of each history bucket (`calibration=true`): what POST /v1/calibration answers
for the bucket's joined pairs, read from their stored predictions and labels.

Only a model configured with `"keep_pairs": true` keeps a joined pair's payloads; a pair joined
before that has none and is left out (each bucket's `pairs` says how many were used). The scan
hands its rows over batch by batch: each pair's prediction and label are decoded to float64 and
kept per bucket (ECE over quantile bins and the isotonic fit of the Brier decomposition need all
of a bucket's pairs at once), at most MAX_CALIBRATION_VALUES numbers over the whole window; each
bucket is calibrated, and its arrays let go, one after the other.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.engine.calibration import DEFAULT_BINS, MAX_BINS, STRATEGIES, Strategy, calibration
from service.engine.errors import LossInputError
from service.store import DTYPES, Model
from service.store.pairs import PredictionRow
from service.usecases.errors import InvalidInputError
from service.usecases.windows import query_problem

# Numbers (prediction values and labels) the kept pairs of one answer may hold: 16 MB of float64,
# a million pairs of one binary column. The engine's working arrays for one bucket come on top
# (service.engine.calibration.working_bytes).
MAX_CALIBRATION_VALUES = 2_000_000
TRUE, FALSE = ("true", "1"), ("false", "0")


@dataclass(frozen=True)
class Asked:
    """The query's calibration settings; `from_logits` None: the model's (see `from_logits_of`)."""

    bins: int
    strategy: Strategy
    from_logits: bool | None


def asked_calibration(
    flag: str | None, bins: str | None, strategy: str | None, from_logits: str | None
) -> Asked | None:
    """The calibration the query asks for, or None (`calibration` absent or false); `bins`,
    `strategy` and `from_logits` are refused where they come without `calibration=true`."""
    wanted = _flag("calibration", flag)
    if not wanted:
        for name, value in (("bins", bins), ("strategy", strategy), ("from_logits", from_logits)):
            if value is not None:
                raise query_problem(name, "applies to calibration=true only")
        return None
    count = DEFAULT_BINS
    if bins is not None:
        try:
            count = int(bins)
        except ValueError:
            count = 0
        if not 1 <= count <= MAX_BINS:
            raise query_problem("bins", f"must be an integer in [1, {MAX_BINS}], got {bins[:64]!r}")
    chosen = "uniform" if strategy is None else strategy
    if chosen not in STRATEGIES:
        raise query_problem("strategy", f"must be one of {list(STRATEGIES)}, got {chosen[:64]!r}")
    binning: Strategy = "quantile" if chosen == "quantile" else "uniform"
    return Asked(count, binning, None if from_logits is None else _flag("from_logits", from_logits))


def _flag(name: str, text: str | None) -> bool:
    if text is None:
        return False
    if text.lower() in TRUE:
        return True
    if text.lower() in FALSE:
        return False
    raise query_problem(name, f"must be true or false, got {text[:64]!r}")


def from_logits_of(model: Model) -> bool:
    """Whether the model's predictions are logits, by default: its first configured loss's
    `from_logits` option (false where that loss has none)."""
    return bool(model.config["losses"][0]["options"].get("from_logits", False))


@dataclass
class BucketCalibration:
    """Each entry's (bucket's, and segment value's) pairs with payloads, as float64 arrays."""

    model: Model
    settings: Asked
    predictions: dict[int, list[NDArray[np.float64]]] = field(default_factory=dict)
    labels: dict[int, list[NDArray[np.float64]]] = field(default_factory=dict)
    held: int = 0

    def __post_init__(self) -> None:
        if not self.model.config.get("keep_pairs", False):
            raise query_problem(
                "calibration",
                f"model {self.model.name} does not keep its pairs' predictions and labels (its joined pairs keep only "
                'their losses): configure it with "keep_pairs": true, and the pairs that join from then on are '
                "calibrated",
            )

    def add(self, rows: Sequence[PredictionRow], entries: Sequence[int]) -> None:
        """The joined rows with both payloads, each into its entry (`entries`, one per row)."""
        kept = [i for i, row in enumerate(rows) if row.prediction is not None and row.label is not None]
        if not kept:
            return
        # Every stored row of a side has the model's shape (the first rows fix it for good).
        prediction_shape, label_shape = self.model.prediction_shape or (), self.model.label_shape or ()
        values = len(kept) * (math.prod(prediction_shape) + math.prod(label_shape))
        if self.held + values > MAX_CALIBRATION_VALUES:
            raise query_problem(
                "calibration",
                f"the window's joined pairs hold more than {MAX_CALIBRATION_VALUES:,} prediction and label values "
                "to calibrate; ask for a shorter window (start, end)",
            )
        self.held += values
        picked = [rows[i] for i in kept]
        predictions = _decoded(
            [r.prediction or b"" for r in picked], [r.prediction_dtype for r in picked], prediction_shape
        )
        labels = _decoded([r.label or b"" for r in picked], [r.label_dtype or 0 for r in picked], label_shape)
        at = np.array([entries[i] for i in kept], np.int64)
        for entry in np.unique(at).tolist():
            mine = at == entry
            self.predictions.setdefault(entry, []).append(predictions[mine])
            self.labels.setdefault(entry, []).append(labels[mine])

    def answer(self, entry: int, where: str) -> dict[str, Any] | None:
        """The entry's calibration as POST /v1/calibration answers it, with the pairs used (`pairs`),
        or None where no pair has its payloads; its arrays are let go. `where` names the entry in
        a refusal (the engine's reason, its index counting the entry's pairs in time order)."""
        parts, labels = self.predictions.pop(entry, None), self.labels.pop(entry, None)
        if not parts or not labels:
            return None
        predictions, targets = np.concatenate(parts), np.concatenate(labels)
        del parts, labels
        from_logits = self.settings.from_logits
        try:
            result = calibration(
                predictions,
                targets,
                from_logits=from_logits_of(self.model) if from_logits is None else from_logits,
                bins=self.settings.bins,
                strategy=self.settings.strategy,
            )
        except LossInputError as exc:
            raise InvalidInputError(
                "calibration", f"cannot be computed for the pairs of the bucket {where}: {exc}", part="query"
            ) from None
        return {**result.answer(), "pairs": len(predictions)}


def _decoded(payloads: Sequence[bytes], codes: Sequence[int], shape: tuple[int, ...]) -> NDArray[np.float64]:
    """Stored rows as float64, (rows, *shape): the rows of each dtype joined and viewed at once."""
    values = np.empty((len(payloads), *shape))
    code_of = np.asarray(codes, np.int64)
    for code in np.unique(code_of).tolist():
        rows = code_of == code
        joined = b"".join(itertools.compress(payloads, rows.tolist()))
        values[rows] = np.frombuffer(joined, dtype=DTYPES[code]).reshape((-1, *shape))
    return values
