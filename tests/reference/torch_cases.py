"""Reference cases computed by PyTorch CPU, shared by the fixture generator and the live tests.

`cases()` is deterministic (fixed seeds); `torch_reference(case)` evaluates one case with
torch.nn.functional and returns (per_sample, mean) as Python floats.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Case = dict[str, Any]


def _probs(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    raw = rng.random((n, c)) + 1e-3
    return raw / raw.sum(axis=1, keepdims=True)


def cases() -> list[Case]:
    rng = np.random.default_rng(20261122)
    out: list[Case] = []

    def add(loss: str, options: dict[str, Any], predictions: np.ndarray, labels: np.ndarray, tag: str) -> None:
        for dtype in ("float64", "float32"):
            out.append(
                {
                    "id": f"{loss}-{tag}-{dtype}",
                    "loss": loss,
                    "options": options,
                    "dtype": dtype,
                    "convention": "torch",
                    "predictions": predictions.astype(dtype).tolist(),
                    "labels": labels.tolist(),
                }
            )

    n, c = 16, 5
    logits = rng.normal(0, 3, (n, c))
    logits[0, 0], logits[1, 1] = 1e4, -1e4
    targets = rng.integers(0, c, n)
    add("sparse_categorical_crossentropy", {"from_logits": True}, logits, targets, "logits")
    add("sparse_categorical_crossentropy", {"from_logits": True, "label_smoothing": 0.1}, logits, targets, "smooth")
    weighted = {"from_logits": True, "class_weight": [0.5, 1.0, 2.0, 0.1, 3.0]}
    add("sparse_categorical_crossentropy", weighted, logits, targets, "weighted")
    ignored = targets.copy()
    ignored[::3] = -100
    add(
        "sparse_categorical_crossentropy", {**weighted, "label_smoothing": 0.2}, logits, ignored, "ignore-smooth-weight"
    )
    add("sparse_categorical_crossentropy", {"from_logits": True, "ignore_index": 2}, logits, targets, "ignore-2")
    probabilities = _probs(rng, n, c)
    probabilities[2, targets[2]] = 0.0
    add("sparse_categorical_crossentropy", {}, probabilities, targets, "probabilities")
    soft = _probs(rng, n, c)
    add("categorical_crossentropy", {"from_logits": True}, logits, soft, "soft")
    add(
        "categorical_crossentropy",
        {"from_logits": True, "label_smoothing": 0.15, "class_weight": [1.0, 2.0, 0.5, 1.5, 1.0]},
        logits,
        soft,
        "smooth-weight",
    )
    image_logits = rng.normal(0, 2, (4, 3, 2, 5))  # N, C, H, W
    image_targets = rng.integers(0, 3, (4, 2, 5))
    add("sparse_categorical_crossentropy", {"from_logits": True}, image_logits, image_targets, "nchw")

    bl = rng.normal(0, 4, (n, 3))
    bl[0, 0], bl[0, 1] = 1e4, -1e4
    by = rng.integers(0, 2, (n, 3)).astype(float)
    add("binary_crossentropy", {"from_logits": True}, bl, by, "logits")
    add(
        "binary_crossentropy",
        {"from_logits": True, "pos_weight": [2.0, 0.5, 1.0], "weight": [1.0, 0.2, 3.0]},
        bl,
        by,
        "pos",
    )
    bp = rng.random((n, 3))
    bp[0, 0], bp[1, 0] = 0.0, 1.0
    add("binary_crossentropy", {}, bp, by, "probabilities")
    add("binary_crossentropy", {"weight": [0.3]}, bp, rng.random((n, 3)), "soft-weight")

    regression_p = rng.normal(0, 2, (n, 4))
    regression_y = rng.normal(0, 2, (n, 4))
    add("mean_squared_error", {}, regression_p, regression_y, "normal")
    add("mean_absolute_error", {}, regression_p, regression_y, "normal")
    return out


def torch_reference(case: Case) -> tuple[Any, float]:
    import torch
    import torch.nn.functional as F  # noqa: N812

    dtype = getattr(torch, case["dtype"])
    x = torch.tensor(case["predictions"], dtype=dtype)
    options = case["options"]
    loss = case["loss"]

    def vector(name: str) -> Any:
        return None if options.get(name) is None else torch.tensor(options[name], dtype=dtype)

    def both(fn: Any) -> tuple[Any, float]:
        return fn(reduction="none").tolist(), float(fn(reduction="mean"))

    if loss == "sparse_categorical_crossentropy":
        y = torch.tensor(case["labels"], dtype=torch.long)
        ignore = options.get("ignore_index", -100)
        if options.get("from_logits"):
            return both(
                lambda reduction: F.cross_entropy(
                    x,
                    y,
                    weight=vector("class_weight"),
                    ignore_index=ignore,
                    reduction=reduction,
                    label_smoothing=options.get("label_smoothing", 0.0),
                )
            )
        log_p = torch.log(x).clamp(min=-100)
        return both(
            lambda reduction: F.nll_loss(
                log_p, y, weight=vector("class_weight"), ignore_index=ignore, reduction=reduction
            )
        )
    y = torch.tensor(case["labels"], dtype=dtype)
    if loss == "categorical_crossentropy":
        return both(
            lambda reduction: F.cross_entropy(
                x,
                y,
                weight=vector("class_weight"),
                reduction=reduction,
                label_smoothing=options.get("label_smoothing", 0.0),
            )
        )
    if loss == "binary_crossentropy":
        if options.get("from_logits"):
            return both(
                lambda reduction: F.binary_cross_entropy_with_logits(
                    x, y, weight=vector("weight"), pos_weight=vector("pos_weight"), reduction=reduction
                )
            )
        return both(lambda reduction: F.binary_cross_entropy(x, y, weight=vector("weight"), reduction=reduction))
    if loss == "mean_squared_error":
        return both(lambda reduction: F.mse_loss(x, y, reduction=reduction))
    if loss == "mean_absolute_error":
        return both(lambda reduction: F.l1_loss(x, y, reduction=reduction))
    raise KeyError(loss)
