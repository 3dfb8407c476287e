"""Calibration cases and TorchMetrics' numbers for them, shared by the fixture generator and the
live tests (tests/engine/test_calibration.py).

`cases()` is deterministic (a fixed seed); `torchmetrics_reference(case)` evaluates one case with
TorchMetrics: `BinaryCalibrationError` for one column, and for several its
`MulticlassCalibrationError` (which rounds the top-label confidences to float32) beside the same
steps in float64: its `normalize_logits_if_needed`, the top label by `max(dim=1)`, and its
`_ce_compute`, the function both metrics end in.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Case = dict[str, Any]
BINS = (1, 7, 15, 40)
NORMS = {"ece": "l1", "mce": "max"}


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def cases(seed: int = 20261207, n: int = 300) -> list[Case]:
    """One column (probabilities, logits, an (N, 1) column) and several (probabilities, logits),
    miscalibrated on purpose; no confidence lies on a bin edge or at 1 (`off_the_edges`), where
    TorchMetrics bins differently (service/engine/calibration.py)."""
    rng = np.random.default_rng(seed)
    out: list[Case] = []
    p = rng.beta(2.0, 2.0, n)
    out.append({"id": "binary-probabilities", "predictions": p, "labels": rng.random(n) < p**1.5, "from_logits": False})
    z = rng.normal(0.0, 3.0, n)
    y = rng.random(n) < 1 / (1 + np.exp(-0.6 * z))
    out.append({"id": "binary-logits", "predictions": z, "labels": y, "from_logits": True})
    p = rng.random(n)
    out.append({"id": "binary-column", "predictions": p[:, None], "labels": rng.random(n) < p, "from_logits": False})
    for classes, from_logits in ((4, False), (7, True)):
        logits = rng.normal(0.0, 2.0, (n, classes))
        truth = _softmax(0.5 * logits)  # the model is overconfident: the labels follow a flatter distribution
        labels = (rng.random((n, 1)) > truth.cumsum(axis=1)).sum(axis=1).clip(max=classes - 1)
        kind = "logits" if from_logits else "probabilities"
        predictions = logits if from_logits else _softmax(logits)
        out.append(
            {
                "id": f"{classes}-classes-{kind}",
                "predictions": predictions,
                "labels": labels,
                "from_logits": from_logits,
            }
        )
    for case in out:
        case["predictions"] = np.asarray(case["predictions"], dtype=np.float64).tolist()
        case["labels"] = np.asarray(case["labels"], dtype=np.int64).tolist()
        assert off_the_edges(case), case["id"]
    return out


def confidences(case: Case) -> np.ndarray:
    """The confidences the bins hold: p (or sigmoid(z)) for one column, the top-label probability for several."""
    x = np.asarray(case["predictions"], dtype=np.float64)
    if x.ndim == 1 or x.shape[1] == 1:
        x = x.reshape(-1)
        return 1 / (1 + np.exp(-x)) if case["from_logits"] else x
    return (_softmax(x) if case["from_logits"] else x).max(axis=1)


def off_the_edges(case: Case) -> bool:
    """No confidence equals an edge k/B of the uniform bins (as NumPy and PyTorch compute them) or 1."""
    import math

    c = confidences(case)
    edges = {1.0}
    for bins in BINS:
        edges |= set(np.linspace(0, 1, bins + 1).tolist()) | {k / bins for k in range(1, bins)}
    edges.discard(0.0)  # 0 is in the first bin under every convention
    return not any(math.isclose(v, e, rel_tol=0, abs_tol=1e-12) for v in c.tolist() for e in edges)


def torchmetrics_reference(case: Case) -> dict[str, Any]:
    """{"<bins>": {"ece", "mce"}} from TorchMetrics in float64; for several columns also
    "float32": the same from `MulticlassCalibrationError` itself."""
    import torch
    from torchmetrics.classification import BinaryCalibrationError, MulticlassCalibrationError
    from torchmetrics.functional.classification.calibration_error import _ce_compute
    from torchmetrics.utilities.compute import normalize_logits_if_needed

    preds = torch.tensor(case["predictions"], dtype=torch.float64)
    target = torch.tensor(case["labels"], dtype=torch.long)
    several = preds.ndim == 2 and preds.shape[1] > 1
    result: dict[str, Any] = {}
    for bins in BINS:
        numbers: dict[str, Any] = {}
        for name, norm in NORMS.items():
            if several:
                probabilities = normalize_logits_if_needed(preds, "softmax")
                confidence, top = probabilities.max(dim=1)
                numbers[name] = _ce_compute(confidence, top.eq(target).to(torch.float64), bins, norm).item()
                metric = MulticlassCalibrationError(num_classes=preds.shape[1], n_bins=bins, norm=norm)
                numbers.setdefault("float32", {})[name] = metric(preds, target).item()
            else:
                column = preds.reshape(-1)
                numbers[name] = BinaryCalibrationError(n_bins=bins, norm=norm)(column, target.reshape(-1)).item()
        result[str(bins)] = numbers
    return result
