"""A deliberately naive float64 re-implementation of each formula, for testing the engine.

Python loops over `math`, one sample at a time, written from the frameworks' published formulas
(keras/src/losses/losses.py, torch/nn/functional.py docs). It shares no code with `service`.
Each function returns (per_sample, mean) for 2-D inputs (N, C) / (N, L).
"""

from __future__ import annotations

import itertools
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


def _rows(p, y, fn):
    """Keras's per-sample mean over the last axis of an element-wise formula."""
    per = [_mean([fn(a, b) for a, b in zip(prow, yrow, strict=True)]) for prow, yrow in zip(p, y, strict=True)]
    return per, _mean(per)


def mape(p, y):
    return _rows(p, y, lambda a, b: 100 * abs((b - a) / max(abs(b), EPS)))


def msle(p, y):
    return _rows(p, y, lambda a, b: (math.log(max(a, EPS) + 1) - math.log(max(b, EPS) + 1)) ** 2)


def huber_keras(p, y, delta):
    def one(a, b):
        e = abs(a - b)
        return 0.5 * e * e if e <= delta else delta * e - 0.5 * delta * delta

    return _rows(p, y, one)


def log_cosh(p, y):
    return _rows(p, y, lambda a, b: math.log(math.cosh(a - b)))


def poisson(p, y):
    return _rows(p, y, lambda a, b: a - b * math.log(a + EPS))


def kl_keras(p, y):
    per = []
    for prow, yrow in zip(p, y, strict=True):
        total = 0.0
        for a, b in zip(prow, yrow, strict=True):
            a, b = min(max(a, EPS), 1), min(max(b, EPS), 1)
            total += b * math.log(b / a)
        per.append(total)
    return per, _mean(per)


def cosine_keras(p, y):
    per = []
    for prow, yrow in zip(p, y, strict=True):
        np_ = math.sqrt(max(sum(a * a for a in prow), EPS * EPS))
        ny = math.sqrt(max(sum(b * b for b in yrow), EPS * EPS))
        per.append(-sum(a * b for a, b in zip(prow, yrow, strict=True)) / (np_ * ny))
    return per, _mean(per)


def _flat(row):
    return [v for x in row for v in _flat(x)] if isinstance(row, list) else [row]


def dice(p, y):
    """keras/src/losses/losses.py dice, each sample summed over all its axes."""
    per = []
    for prow, yrow in zip(p, y, strict=True):
        ps, ys = _flat(prow), _flat(yrow)
        intersection = sum(a * b for a, b in zip(ps, ys, strict=True))
        per.append(1 - 2 * intersection / (sum(ys) + sum(ps) + EPS))
    return per, _mean(per)


def tversky(p, y, alpha=0.5, beta=0.5):
    """keras/src/losses/losses.py tversky (its `fp` = sum((1 - p) y), weighted by alpha)."""
    per = []
    for prow, yrow in zip(p, y, strict=True):
        pairs = list(zip(_flat(prow), _flat(yrow), strict=True))
        t = sum(a * b for a, b in pairs)
        fp = sum((1 - a) * b for a, b in pairs)
        fn = sum(a * (1 - b) for a, b in pairs)
        per.append(1 - t / (t + alpha * fp + beta * fn + EPS))
    return per, _mean(per)


def _signs(y):
    flat = [v for row in y for v in row]
    binary = all(v in (0, 1) for v in flat)
    return [[2 * v - 1 for v in row] for row in y] if binary else y


def hinge(p, y):
    return _rows(p, _signs(y), lambda a, b: max(1 - a * b, 0))


def squared_hinge(p, y):
    return _rows(p, _signs(y), lambda a, b: max(1 - a * b, 0) ** 2)


def categorical_hinge(p, y):
    per = []
    for prow, yrow in zip(p, y, strict=True):
        pos = sum(a * b for a, b in zip(prow, yrow, strict=True))
        neg = max((1 - b) * a for a, b in zip(prow, yrow, strict=True))
        per.append(max(neg - pos + 1, 0))
    return per, _mean(per)


def binary_focal(p, y, gamma, alpha, balance, from_logits, label_smoothing):
    def one(x, t):
        t = t * (1 - label_smoothing) + 0.5 * label_smoothing
        q = 1 / (1 + math.exp(-x)) if from_logits else x
        c = _clip(q)
        bce = -(t * math.log(c) + (1 - t) * math.log(1 - c))
        p_t = t * q + (1 - t) * (1 - q)
        value = (1 - p_t) ** gamma * bce
        return value * (t * alpha + (1 - t) * (1 - alpha)) if balance else value

    return _rows(p, y, one)


def categorical_focal(p, y, alpha, gamma, from_logits):
    per = []
    for prow, yrow in zip(p, y, strict=True):
        q = [math.exp(v) for v in _log_softmax(prow)] if from_logits else prow
        s = sum(q)
        total = 0.0
        for k, (qk, yk) in enumerate(zip(q, yrow, strict=True)):
            o = _clip(qk / s)
            a = alpha[k] if isinstance(alpha, list) else alpha
            total += a * (1 - o) ** gamma * (-yk * math.log(o))
        per.append(total)
    return per, _mean(per)


def poly1(p, y, epsilon):
    per = []
    for prow, yrow in zip(p, y, strict=True):
        lp = _log_softmax(prow)
        ce = -sum(b * a for a, b in zip(lp, yrow, strict=True))
        per.append(ce + epsilon * sum(b * (1 - math.exp(a)) for a, b in zip(lp, yrow, strict=True)))
    return per, _mean(per)


def multilabel_soft_margin(p, y, weight=None):
    """torch.nn.functional.multilabel_soft_margin_loss, one sample and one label at a time."""
    per_sample = []
    for row, targets in zip(p, y, strict=True):
        weights = weight if isinstance(weight, list) else [1.0 if weight is None else weight] * len(row)
        total = 0.0
        for x, t, w in zip(row, targets, weights, strict=True):
            log_sigmoid = -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))
            log_sigmoid_negative = log_sigmoid - x
            total += -w * (t * log_sigmoid + (1 - t) * log_sigmoid_negative)
        per_sample.append(total / len(row))
    return per_sample, _mean(per_sample)


def multilabel_margin(p, y):
    """torch.nn.functional.multilabel_margin_loss: each target up to the first -1 against every non-target."""
    per_sample = []
    for row, targets in zip(p, y, strict=True):
        counted = []
        for t in targets:
            if t < 0:
                break
            counted.append(t)
        total = 0.0
        for j in counted:
            for i, x in enumerate(row):
                if i not in counted:
                    total += max(0.0, 1.0 - (row[j] - x))
        per_sample.append(total / len(row))
    return per_sample, _mean(per_sample)


def _quad_options(a, b, mu, sigma):
    """Breakpoints at mu and where the CDF leaves 0 and reaches 1, where they lie inside (a, b)."""
    inside = [z for z in (mu - 8 * sigma, mu, mu + 8 * sigma) if a < z < b]
    return {"epsabs": 0, "epsrel": 1e-13, "limit": 500, "points": inside or None}


def crps_gaussian(predictions, observations):
    """The CRPS's definition integrated numerically: int (F(z) - 1{z >= y})^2 dz, F the normal CDF.

    scipy's adaptive quadrature on each side of y (the integrand jumps there); sigma = 0 is the
    point forecast, whose CDF is a step at mu: the integral is |y - mu|.
    """
    from scipy.integrate import quad

    per_sample = []
    for (mu, sigma), y in zip(predictions, observations, strict=True):
        if sigma == 0:
            per_sample.append(abs(y - mu))
            continue

        def cdf(z, mu=mu, sigma=sigma):
            return 0.5 * math.erfc(-(z - mu) / (sigma * math.sqrt(2.0)))

        def survival(z, mu=mu, sigma=sigma):  # 1 - F, without the cancellation right of mu
            return 0.5 * math.erfc((z - mu) / (sigma * math.sqrt(2.0)))

        # The normal CDF is 0 and 1 to double precision beyond 40 sigma; the peak at mu is a breakpoint.
        low, high = min(y, mu - 40 * sigma), max(y, mu + 40 * sigma)
        below = quad(lambda z, cdf=cdf: cdf(z) ** 2, low, y, **_quad_options(low, y, mu, sigma))[0]
        above = quad(lambda z, survival=survival: survival(z) ** 2, y, high, **_quad_options(y, high, mu, sigma))[0]
        per_sample.append(below + above)
    return per_sample, _mean(per_sample)


def crps_ensemble(members, observations, weights=None):
    """The CRPS of an ensemble by its pairwise form: E|X - y| - 1/2 E|X - X'|, X, X' drawn from the members."""
    per_sample = []
    for row, y in zip(members, observations, strict=True):
        w = [1.0] * len(row) if weights is None else weights
        total = sum(w)
        p = [v / total for v in w]
        spread = sum(p[i] * p[k] * abs(row[i] - row[k]) for i in range(len(row)) for k in range(len(row)))
        per_sample.append(sum(q * abs(x - y) for q, x in zip(p, row, strict=True)) - 0.5 * spread)
    return per_sample, _mean(per_sample)


# scikit-learn's metrics, from the formulas in its user guide (model_evaluation.rst): each returns
# (per_sample, weighted mean) for (N, K) inputs, the mean being np.average's sum(w l) / sum(w).


def _weighted(per, weights):
    weights = [1.0] * len(per) if weights is None else weights
    return per, sum(w * v for w, v in zip(weights, per, strict=True)) / sum(weights)


def pinball(p, y, alpha, weights=None):
    """alpha (y - p) where y >= p, (1 - alpha) (p - y) below; outputs averaged uniformly."""
    per = [_mean([alpha * (b - a) if b >= a else (1 - alpha) * (a - b) for a, b in zip(pr, yr, strict=True)])
           for pr, yr in zip(p, y, strict=True)]  # fmt: skip
    return _weighted(per, weights)


def tweedie(p, y, power, weights=None):
    """The unit deviance of the Tweedie distribution with variance power `power`."""

    def one(mu, t):
        if power == 0:
            return (t - mu) ** 2
        if power == 1:
            return 2 * ((t * math.log(t / mu) if t > 0 else 0.0) - t + mu)
        if power == 2:
            return 2 * (math.log(mu / t) + t / mu - 1)
        positive = max(t, 0.0)
        return 2 * (
            positive ** (2 - power) / ((1 - power) * (2 - power))
            - t * mu ** (1 - power) / (1 - power)
            + mu ** (2 - power) / (2 - power)
        )

    per = [_mean([one(a, b) for a, b in zip(pr, yr, strict=True)]) for pr, yr in zip(p, y, strict=True)]
    return _weighted(per, weights)


def hamming(p, y, weights=None):
    """The fraction of a sample's labels that differ (one label per sample: 0 or 1)."""
    per = [sum(a != b for a, b in zip(pr, yr, strict=True)) / len(pr) for pr, yr in zip(p, y, strict=True)]
    return _weighted(per, weights)


def generalized_cross_entropy(p, y, q, weights=None):
    """(1 - p_y^q) / q, p_y the probability given to the sample's class (Zhang & Sabuncu 2018)."""
    per = [(1.0 - row[label] ** q) / q for row, label in zip(p, y, strict=True)]
    return _weighted(per, weights)


def circle(e, y, gamma=80.0, margin=0.4, remove_diagonal=True, weights=None):
    """Circle loss (Sun et al. 2020) as Keras states it, pair by pair; returns (per_sample, keras mean).

    A sample with no positive or no negative pair scores 0 and Keras's mask (loss > 0) leaves it
    out of the mean: sum(w l) over the rest / their number."""
    n = len(e)
    per = []
    for i in range(n):
        pos, neg = [], []
        for j in range(n):
            d = max(1.0 - sum(a * b for a, b in zip(e[i], e[j], strict=True)), 0.0)
            if y[i] == y[j] and not (remove_diagonal and i == j):
                pos.append(-gamma * max(margin + d, 0.0) * (margin - d))
            elif y[i] != y[j]:
                neg.append(gamma * max(1.0 + margin - d, 0.0) * (1.0 - margin - d))
        if not pos or not neg:
            per.append(0.0)
            continue
        lse = [max(t) + math.log(sum(math.exp(v - max(t)) for v in t)) for t in (pos, neg)]
        x = lse[0] + lse[1]
        per.append(max(x, 0.0) + math.log1p(math.exp(-abs(x))))
    weights = [1.0] * n if weights is None else weights
    weighted = [w * v for w, v in zip(weights, per, strict=True)]
    valid = sum(1 for v in per if v > 0)
    return weighted, (sum(weighted) / valid if valid else 0.0)


def _collapse(path):
    """CTC's many-to-one map: merge repeated classes, then drop the blanks (kept as None here)."""
    merged = [c for i, c in enumerate(path) if i == 0 or c != path[i - 1]]
    return [c for c in merged if c is not None]


def ctc(log_probs, targets, blank=0):
    """-log sum over every path of len(log_probs) classes that collapses to `targets` of the
    product of its probabilities, by enumerating all C^T paths (tiny T only). `log_probs` holds
    one sample's T rows of C log-probabilities; returns inf when no path collapses to the targets."""
    classes = len(log_probs[0])
    total = 0.0
    for path in itertools.product(range(classes), repeat=len(log_probs)):
        if _collapse([None if c == blank else c for c in path]) == list(targets):
            total += math.exp(sum(row[c] for row, c in zip(log_probs, path, strict=True)))
    return -math.log(total) if total > 0 else math.inf
