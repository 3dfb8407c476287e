"""A deliberately naive float64 re-implementation of each formula, for testing the engine.

Python loops over `math`, one sample at a time, written from the frameworks' published formulas
(keras/src/losses/losses.py, torch/nn/functional.py docs). It shares no code with `service`.
Each function returns (per_sample, mean) for 2-D inputs (N, C) / (N, L).
"""

from __future__ import annotations

import math

EPS = 1e-7


def _clip(p: float) -> float:
    return min(max(p, EPS), 1 - EPS)


def _log_softmax(row: list[float]) -> list[float]:
    m = max(row)
    total = sum(math.exp(v - m) for v in row)
    return [v - m - math.log(total) for v in row]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def bce_keras(p, y, from_logits=False, label_smoothing=0.0):
    per = []
    for prow, yrow in zip(p, y, strict=True):
        terms = []
        for x, t in zip(prow, yrow, strict=True):
            t = t * (1 - label_smoothing) + 0.5 * label_smoothing
            if from_logits:
                # log(1 + e^-x) written the long way, on the side where it cannot overflow
                terms.append(max(x, 0) - x * t + math.log(1 + math.exp(-abs(x))))
            else:
                q = _clip(x)
                terms.append(-(t * math.log(q) + (1 - t) * math.log(1 - q)))
        per.append(_mean(terms))
    return per, _mean(per)


def bce_torch(p, y, from_logits=False, pos_weight=None, weight=None):
    per = []
    for prow, yrow in zip(p, y, strict=True):
        row = []
        for j, (x, t) in enumerate(zip(prow, yrow, strict=True)):
            if from_logits:
                pw = 1.0 if pos_weight is None else pos_weight[j]
                log_sig = -math.log(1 + math.exp(-x)) if x > -30 else x - math.log(1 + math.exp(x))
                log_one_minus = log_sig - x
                value = -(pw * t * log_sig + (1 - t) * log_one_minus)
            else:
                lp = max(math.log(x), -100) if x > 0 else -100
                lq = max(math.log(1 - x), -100) if x < 1 else -100
                value = -(t * lp + (1 - t) * lq)
            if weight is not None:
                value *= weight[j]
            row.append(value)
        per.append(row)
    flat = [v for row in per for v in row]
    return per, _mean(flat)


def _log_probs(row, from_logits, convention):
    if from_logits:
        return _log_softmax(row)
    if convention == "keras":
        s = sum(row)
        return [math.log(_clip(v / s)) for v in row]
    return [max(math.log(v), -100) if v > 0 else -100 for v in row]


def cce(p, y, convention, from_logits=False, label_smoothing=0.0, class_weight=None):
    per = []
    for prow, yrow in zip(p, y, strict=True):
        c = len(prow)
        lp = _log_probs(prow, from_logits, convention)
        t = [v * (1 - label_smoothing) + label_smoothing / c for v in yrow]
        if convention == "keras":
            value = -sum(ti * li for ti, li in zip(t, lp, strict=True))
            if class_weight is not None:
                value *= class_weight[yrow.index(max(yrow))]
        else:
            w = class_weight or [1.0] * c
            value = -sum(wi * ti * li for wi, ti, li in zip(w, t, lp, strict=True))
        per.append(value)
    return per, _mean(per)


def scce(p, y, convention, from_logits=False, ignore_index=None, label_smoothing=0.0, class_weight=None):
    if ignore_index is None and convention == "torch":
        ignore_index = -100
    per, denominators, valid = [], [], 0
    for prow, label in zip(p, y, strict=True):
        c = len(prow)
        w = class_weight or [1.0] * c
        if label == ignore_index:
            per.append(0.0)
            denominators.append(0.0)
            continue
        valid += 1
        lp = _log_probs(prow, from_logits, convention)
        nll = -lp[label]
        smooth_terms = [(w[k] if convention == "torch" else 1.0) * -lp[k] for k in range(c)]
        if convention == "keras":
            value = ((1 - label_smoothing) * nll + label_smoothing / c * sum(smooth_terms)) * w[label]
            denominators.append(1.0)
        else:
            value = (1 - label_smoothing) * w[label] * nll + label_smoothing / c * sum(smooth_terms)
            denominators.append(w[label])
        per.append(value)
    if convention == "keras":
        mean = sum(per) / valid if valid else 0.0  # Keras masks ignored samples out of the mean
    else:
        mean = sum(per) / sum(denominators)
    return per, mean


def elementwise(p, y, convention, fn):
    rows = [[fn(a, b) for a, b in zip(prow, yrow, strict=True)] for prow, yrow in zip(p, y, strict=True)]
    if convention == "keras":
        per = [_mean(r) for r in rows]
        return per, _mean(per)
    return rows, _mean([v for r in rows for v in r])


def mse(p, y, convention):
    return elementwise(p, y, convention, lambda a, b: (a - b) ** 2)


def mae(p, y, convention):
    return elementwise(p, y, convention, lambda a, b: abs(a - b))
