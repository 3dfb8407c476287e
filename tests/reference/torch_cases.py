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


def cases(seed: int = 20261122, n: int = 16) -> list[Case]:
    """Every torch-convention case in both dtypes; the committed fixture uses the defaults, the live
    tests draw other seeds and batch sizes (n >= 3: a few cases set entries of the first rows)."""
    rng = np.random.default_rng(seed)
    out: list[Case] = []

    def add(
        loss: str,
        options: dict[str, Any],
        predictions: np.ndarray,
        labels: np.ndarray,
        tag: str,
        terms: int = 1,
        scale: float = 1.0,
        extra_ulps: float = 0.0,
    ) -> None:
        """`terms`: how many values each per-sample loss sums; `scale`: the largest intermediate term
        where a formula subtracts terms that cancel; `extra_ulps`: where a formula raises a rounded
        value to a power. All three set the float32 tolerance."""
        for dtype in ("float64", "float32"):
            out.append(
                {
                    "id": f"{loss}-{tag}-{dtype}",
                    "loss": loss,
                    "options": options,
                    "dtype": dtype,
                    "convention": "torch",
                    "terms": terms,
                    "scale": scale,
                    "extra_ulps": extra_ulps,
                    "predictions": predictions.astype(dtype).tolist(),
                    "labels": labels.astype(dtype).tolist() if labels.dtype.kind == "f" else labels.tolist(),
                }
            )

    c = 5
    logits = rng.normal(0, 3, (n, c))
    logits[0, 0], logits[1, 1] = 1e4, -1e4
    targets = rng.integers(0, c, n)
    add("sparse_categorical_crossentropy", {"from_logits": True}, logits, targets, "logits")
    add("sparse_categorical_crossentropy", {"from_logits": True, "label_smoothing": 0.1}, logits, targets, "smooth", c)
    weighted = {"from_logits": True, "class_weight": [0.5, 1.0, 2.0, 0.1, 3.0]}
    add("sparse_categorical_crossentropy", weighted, logits, targets, "weighted")
    ignored = targets.copy()
    ignored[::3] = -100
    add(
        "sparse_categorical_crossentropy",
        {**weighted, "label_smoothing": 0.2},
        logits,
        ignored,
        "ignore-smooth-weight",
        c,  # label smoothing sums over the classes
    )
    add("sparse_categorical_crossentropy", {"from_logits": True, "ignore_index": 2}, logits, targets, "ignore-2")
    probabilities = _probs(rng, n, c)
    probabilities[2, targets[2]] = 0.0
    add("sparse_categorical_crossentropy", {}, probabilities, targets, "probabilities")
    soft = _probs(rng, n, c)
    add("categorical_crossentropy", {"from_logits": True}, logits, soft, "soft", c)
    add(
        "categorical_crossentropy",
        {"from_logits": True, "label_smoothing": 0.15, "class_weight": [1.0, 2.0, 0.5, 1.5, 1.0]},
        logits,
        soft,
        "smooth-weight",
        c,
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
    add("huber", {"delta": 1.5}, regression_p, regression_y, "delta")
    add("smooth_l1", {"beta": 0.5}, regression_p, regression_y, "beta")
    add("smooth_l1", {"beta": 0.0}, regression_p, regression_y, "l1")
    add("cosine_similarity", {}, regression_p, regression_y, "vectors", 4)

    log_probabilities = (
        logits
        - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True))
        - logits.max(1, keepdims=True)
    )
    add("nll", {"weight": [0.5, 1.0, 2.0, 0.1, 3.0]}, log_probabilities, ignored, "weighted-ignore")
    add("nll", {"ignore_index": 1}, log_probabilities, targets, "ignore-1")

    rates = rng.uniform(0.0, 6.0, (n, 3))
    counts = rng.poisson(2.0, (n, 3)).astype(float)
    log_rates = rng.normal(0, 1, (n, 3))
    add(
        "poisson_nll",
        {},
        log_rates,
        counts,
        "log-input",
        2,
        float(max(np.exp(log_rates).max(), np.abs(counts * log_rates).max())),
    )
    stirling_scale = float((counts * np.log(np.maximum(counts, 1)) + counts + 3).max())
    add("poisson_nll", {"log_input": False, "full": True}, rates, counts, "rates-full", 3, stirling_scale)
    means = rng.normal(0, 2, (n, 3))
    variances = rng.uniform(0.0, 3.0, (n, 3))
    variances[0, 0] = 0.0  # raised to eps
    add("gaussian_nll", {"full": True}, np.stack([means, variances], axis=-1), rng.normal(0, 2, (n, 3)), "full")

    target_distribution = _probs(rng, n, c)
    target_distribution[0, 0] = 0.0
    target_distribution[0] /= target_distribution[0].sum()
    add("kl_divergence", {}, _probs(rng, n, c), target_distribution, "probabilities", c)
    add(
        "kl_divergence",
        {"log_input": True, "log_target": True},
        np.log(_probs(rng, n, c)),
        np.log(_probs(rng, n, c)),
        "logs",
        c,
    )

    add("multi_margin", {}, logits, targets, "default", c)
    add("multi_margin", {"p": 2, "margin": 0.5, "weight": [0.5, 1.0, 2.0, 0.1, 3.0]}, logits, targets, "p2-weight", c)
    signs = rng.choice([-1.0, 1.0], n)
    add("margin_ranking", {"margin": 0.3}, rng.normal(0, 1, (n, 2)), signs, "margin")
    add("hinge_embedding", {"margin": 1.5}, rng.uniform(0, 3, (n, 3)), rng.choice([-1.0, 1.0], (n, 3)), "margin")
    add("cosine_embedding", {"margin": 0.2}, rng.normal(0, 1, (n, 2, 6)), signs, "margin", 6)
    for options, tag in (({}, "default"), ({"p": 1.0, "swap": True, "margin": 0.5}, "swap")):
        anchors, pairs = rng.normal(0, 1, (n, 6)), rng.normal(0, 1, (n, 2, 6))
        # The loss subtracts two distances: its float32 error is relative to the larger one.
        order = options.get("p", 2.0)
        distances = np.linalg.norm(anchors[:, None, :] - pairs, ord=order, axis=-1)
        add("triplet_margin", options, anchors, pairs, tag, 6, float(distances.max()) + 1.0)
    add("multilabel_soft_margin", {"weight": [1.0, 0.5, 2.0]}, bl, by, "weighted", 3)
    add("soft_margin", {}, rng.normal(0, 3, (n, 3)), rng.choice([-1.0, 1.0], (n, 3)), "default")
    # (1 - p_t)^gamma carries gamma times p's relative error (an ulp of exp and one of the division).
    add("sigmoid_focal", {}, bl, by, "default", extra_ulps=1.5 * 2.0)
    add("sigmoid_focal", {"alpha": None, "gamma": 0.5}, bl, rng.random((n, 3)), "no-alpha", extra_ulps=1.5 * 0.5)
    _add_nd(add, rng, n, c)
    # Drawn last, so the cases above keep their numbers.
    scores = rng.normal(0, 1, (n, c))
    padded = np.full((n, c), -1)
    for row in range(n):  # 0 to c targets, in random order, a class now and then repeated, then -1 padding
        count = int(rng.integers(0, c + 1))
        padded[row, :count] = rng.choice(c, count, replace=bool(rng.integers(0, 2)))
    padded[0], padded[1] = [-1] * c, list(range(c))
    padded[2] = [3, 3] + [-1] * (c - 2)
    # Up to C x C hinge terms, added per target as ATen adds them but grouped by target: measured at
    # most 2.0 float32 ulp from PyTorch over 150 seeds of 40 rows, so the limit of C terms holds.
    add("multilabel_margin", {}, scores, padded, "padded", c)
    _add_ctc(add, rng, n)
    return out


def _add_ctc(add: Any, rng: np.random.Generator, n: int) -> None:
    """CTC on (N, T, C) log-probabilities, batch first, drawn after every other case. The float32
    recursion rounds at each of the T steps, as PyTorch's does in the same order: measured at most
    3 ulp from PyTorch over 400 batches up to T = 200, so one ulp above the usual limit."""
    t, c = 12, 5
    logits = rng.normal(0, 2, (n, t, c))
    log_p = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    inputs = rng.integers(1, t + 1, n)
    inputs[0] = t
    # At most (T_n + 1) / 2 labels: enough steps for a blank between any two repeated labels.
    targets = np.minimum(rng.integers(0, t // 2 + 1, n), (inputs + 1) // 2)
    targets[1] = 0
    labels = rng.integers(1, c, (n, t // 2))
    labels[2, :2] = 3  # a repeated label
    lengths = {"input_lengths": inputs.tolist(), "target_lengths": targets.tolist()}
    add("ctc", lengths, log_p, labels, "lengths", extra_ulps=1.0)
    add("ctc", lengths, logits, labels, "unnormalised", extra_ulps=1.0)  # taken as given, as PyTorch does
    other_blank = np.where(labels == 2, 0, labels)  # blank 2: the labels are 0, 1, 3, 4
    short = inputs.copy()
    short[0], short[2] = 1, 2  # no alignment: zero_infinity counts these as 0
    targets_short = targets.copy()
    targets_short[0], targets_short[2] = 3, 2
    options = {"blank": 2, "zero_infinity": True, "input_lengths": short.tolist()}
    add(
        "ctc",
        {**options, "target_lengths": targets_short.tolist()},
        log_p,
        other_blank,
        "blank-2-impossible",
        extra_ulps=1.0,
    )
    padded = np.where(np.arange(t // 2) < targets[:, None], labels, 0)  # lengths from the blank padding
    add("ctc", {}, log_p, padded, "blank-padding", extra_ulps=1.0)


def _add_nd(add: Any, rng: np.random.Generator, n: int, c: int) -> None:
    """The same losses on inputs of one, three and four axes, where PyTorch takes them: class axis 1
    for the cross-entropies, the last axis for distances and distributions, element-wise otherwise."""
    t, h = 3, 2
    seq_logits = rng.normal(0, 3, (n, c, t))
    seq_targets = rng.integers(0, c, (n, t))
    add("sparse_categorical_crossentropy", {"from_logits": True}, seq_logits, seq_targets, "3d")
    seq_ignored = seq_targets.copy()
    seq_ignored[::2, 0] = -100
    weighted = {"from_logits": True, "class_weight": [0.5, 1.0, 2.0, 0.1, 3.0][:c]}
    add("sparse_categorical_crossentropy", weighted, seq_logits, seq_ignored, "3d-weighted-ignore")
    add(
        "sparse_categorical_crossentropy",
        {"from_logits": True, "label_smoothing": 0.1},
        seq_logits,
        seq_targets,
        "3d-smooth",
        c,
    )
    seq_soft = rng.random((n, c, t)) + 1e-3
    seq_soft /= seq_soft.sum(axis=1, keepdims=True)
    add("categorical_crossentropy", {"from_logits": True}, seq_logits, seq_soft, "3d-soft", c)
    seq_log_p = seq_logits - np.log(np.exp(seq_logits).sum(axis=1, keepdims=True))
    add("nll", {"weight": [0.5, 1.0, 2.0, 0.1, 3.0][:c]}, seq_log_p, seq_ignored, "3d-weighted-ignore")
    x3, x4 = rng.normal(0, 3, (n, t, 4)), rng.normal(0, 3, (n, t, h, 4))
    y3, y4 = rng.integers(0, 2, (n, t, 4)).astype(float), rng.integers(0, 2, (n, t, h, 4)).astype(float)
    add("binary_crossentropy", {"from_logits": True, "pos_weight": [2.0, 0.5, 1.0, 3.0]}, x3, y3, "3d-pos")
    add("binary_crossentropy", {}, rng.random((n, t, h, 4)), y4, "4d-probabilities")
    add("binary_crossentropy", {"from_logits": True}, rng.normal(0, 3, n), rng.integers(0, 2, n).astype(float), "1d")
    r3, r4 = rng.normal(0, 2, (n, t, 4)), rng.normal(0, 2, (n, t, h, 4))
    add("mean_squared_error", {}, x3, r3, "3d")
    add("mean_squared_error", {}, rng.normal(0, 2, n), rng.normal(0, 2, n), "1d")
    add("mean_absolute_error", {}, x4, r4, "4d")
    add("huber", {"delta": 1.5}, x3, r3, "3d")
    add("smooth_l1", {"beta": 0.5}, x4, r4, "4d")
    add("cosine_similarity", {}, x3, r3, "3d", 4)
    log_rates, counts = rng.normal(0, 1, (n, t, 4)), rng.poisson(2.0, (n, t, 4)).astype(float)
    add(
        "poisson_nll",
        {},
        log_rates,
        counts,
        "3d",
        2,
        float(max(np.exp(log_rates).max(), np.abs(counts * log_rates).max())),
    )
    add("gaussian_nll", {"full": True}, np.stack([r3, rng.uniform(0.1, 3.0, (n, t, 4))], axis=-1), x3, "3d")
    for shape, tag in (((n, t, c), "3d"), ((n, t, h, c), "4d")):
        p_dist, q_dist = rng.random(shape) + 1e-3, rng.random(shape) + 1e-3
        p_dist /= p_dist.sum(axis=-1, keepdims=True)
        q_dist /= q_dist.sum(axis=-1, keepdims=True)
        add("kl_divergence", {}, p_dist, q_dist, tag, c)
        add("kl_divergence", {"log_input": True, "log_target": True}, np.log(p_dist), np.log(q_dist), f"{tag}-logs", c)
    add("hinge_embedding", {"margin": 1.5}, rng.uniform(0, 3, (n, t, 4)), rng.choice([-1.0, 1.0], (n, t, 4)), "3d")
    add("soft_margin", {}, x4, rng.choice([-1.0, 1.0], (n, t, h, 4)), "4d")
    add("multilabel_soft_margin", {"weight": [1.0, 0.5, 2.0, 1.0]}, x3, y3, "3d", 4)
    add("margin_ranking", {"margin": 0.3}, rng.normal(0, 1, (n, t, 2)), rng.choice([-1.0, 1.0], (n, t)), "3d")
    anchors, pairs = rng.normal(0, 1, (n, t, 6)), rng.normal(0, 1, (n, 2, t, 6))
    distances = np.linalg.norm(anchors[:, None] - pairs, axis=-1)
    add("triplet_margin", {}, anchors, pairs, "3d", 6, float(distances.max()) + 1.0)
    add("sigmoid_focal", {}, x3, y3, "3d", extra_ulps=1.5 * 2.0)


def torch_reference(case: Case) -> tuple[Any, float]:
    """PyTorch's (reduction='none', the convention's mean) for a case."""
    per_sample, mean, _ = torch_reductions(case)
    return per_sample, mean


def torch_reductions(case: Case) -> tuple[Any, float, float]:
    """PyTorch's reduction='none', its mean ('mean', or 'batchmean' for KL) and 'sum'."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    dtype = getattr(torch, case["dtype"])
    x = torch.tensor(case["predictions"], dtype=dtype)
    options = case["options"]
    loss = case["loss"]

    def vector(name: str) -> Any:
        return None if options.get(name) is None else torch.tensor(options[name], dtype=dtype)

    def both(fn: Any) -> tuple[Any, float, float]:
        return fn(reduction="none").tolist(), float(fn(reduction="mean")), float(fn(reduction="sum"))

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
    if loss == "nll":
        targets = torch.tensor(case["labels"], dtype=torch.long)
        ignore = options.get("ignore_index", -100)
        return both(
            lambda reduction: F.nll_loss(x, targets, weight=vector("weight"), ignore_index=ignore, reduction=reduction)
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
    if loss == "huber":
        return both(lambda reduction: F.huber_loss(x, y, reduction=reduction, delta=options["delta"]))
    if loss == "smooth_l1":
        return both(lambda reduction: F.smooth_l1_loss(x, y, reduction=reduction, beta=options["beta"]))
    if loss == "cosine_similarity":
        values = -F.cosine_similarity(x, y, dim=-1, eps=1e-8)
        return values.tolist(), float(values.mean()), float(values.sum())
    if loss == "poisson_nll":
        return both(
            lambda reduction: F.poisson_nll_loss(
                x, y, log_input=options.get("log_input", True), full=options.get("full", False), reduction=reduction
            )
        )
    if loss == "gaussian_nll":
        return both(
            lambda reduction: F.gaussian_nll_loss(
                x[..., 0], y, x[..., 1], full=options.get("full", False), reduction=reduction
            )
        )
    if loss == "kl_divergence":
        log_input = x if options.get("log_input") else torch.log(x)
        log_target = options.get("log_target", False)
        pointwise = F.kl_div(log_input, y, reduction="none", log_target=log_target)
        batchmean = F.kl_div(log_input, y, reduction="batchmean", log_target=log_target)
        total = F.kl_div(log_input, y, reduction="sum", log_target=log_target)
        return pointwise.sum(-1).tolist(), float(batchmean), float(total)
    if loss == "multi_margin":
        labels = torch.tensor(case["labels"], dtype=torch.long)
        return both(
            lambda reduction: F.multi_margin_loss(
                x,
                labels,
                p=options.get("p", 1),
                margin=options.get("margin", 1.0),
                weight=vector("weight"),
                reduction=reduction,
            )
        )
    if loss == "margin_ranking":
        return both(
            lambda reduction: F.margin_ranking_loss(
                x[..., 0], x[..., 1], y, margin=options["margin"], reduction=reduction
            )
        )
    if loss == "hinge_embedding":
        return both(lambda reduction: F.hinge_embedding_loss(x, y, margin=options["margin"], reduction=reduction))
    if loss == "cosine_embedding":
        return both(
            lambda reduction: F.cosine_embedding_loss(
                x[:, 0], x[:, 1], y, margin=options["margin"], reduction=reduction
            )
        )
    if loss == "triplet_margin":
        return both(
            lambda reduction: F.triplet_margin_loss(
                x,
                y[:, 0],
                y[:, 1],
                margin=options.get("margin", 1.0),
                p=options.get("p", 2.0),
                swap=options.get("swap", False),
                reduction=reduction,
            )
        )
    if loss == "multilabel_soft_margin":
        return both(lambda reduction: F.multilabel_soft_margin_loss(x, y, weight=vector("weight"), reduction=reduction))
    if loss == "soft_margin":
        return both(lambda reduction: F.soft_margin_loss(x, y, reduction=reduction))
    if loss == "multilabel_margin":
        padded = torch.tensor(case["labels"], dtype=torch.long)
        return both(lambda reduction: F.multilabel_margin_loss(x, padded, reduction=reduction))
    if loss == "ctc":
        return _ctc_reductions(x, case, options)
    if loss == "sigmoid_focal":
        # torchvision.ops.sigmoid_focal_loss, written out in torch ops (torchvision does not install beside
        # this torch build); the formula is torchvision's published one.
        alpha, gamma = options.get("alpha", 0.25), options.get("gamma", 2.0)
        p = torch.sigmoid(x)
        ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
        p_t = p * y + (1 - p) * (1 - y)
        values = ce * ((1 - p_t) ** gamma)
        if alpha is not None:
            values = (alpha * y + (1 - alpha) * (1 - y)) * values
        return values.tolist(), float(values.mean()), float(values.sum())
    raise KeyError(loss)


def _ctc_reductions(x: Any, case: Case, options: dict[str, Any]) -> tuple[Any, float, float]:
    """F.ctc_loss on the case's (N, T, C) log-probabilities, transposed to PyTorch's (T, N, C). The
    sum returned is the one its mean averages, sum(loss_n / max(L_n, 1)), which the engine reports."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    labels = np.asarray(case["labels"])
    blank = options.get("blank", 0)
    samples, steps = x.shape[0], x.shape[1]
    inputs = options.get("input_lengths") or [steps] * samples
    default_targets = np.logical_and.accumulate(labels != blank, axis=1).sum(axis=1).tolist()
    targets = options.get("target_lengths") or default_targets

    def loss(reduction: str) -> Any:
        return F.ctc_loss(
            x.transpose(0, 1),
            torch.tensor(labels, dtype=torch.long),
            inputs,
            targets,
            blank=blank,
            reduction=reduction,
            zero_infinity=options.get("zero_infinity", False),
        )

    per_sample = loss("none")
    divided = per_sample / torch.tensor(targets, dtype=per_sample.dtype).clamp_min(1)
    return per_sample.tolist(), float(loss("mean")), float(divided.sum())
