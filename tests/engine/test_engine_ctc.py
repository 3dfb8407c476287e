"""ctc against a brute-force sum over every alignment (float64), against PyTorch live on random
alignments when torch is installed, and its refusals. Committed numbers: PyTorch's in
tests/fixtures/torch_reference.json (tests/engine/test_engine_torch.py), Keras's in
tests/fixtures/keras_reference.json (tests/engine/test_engine_keras.py)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.engine import LossInputError, compute, parallel
from service.engine.losses import ctc as ctc_module
from tests.reference import naive
from tests.tolerance import FLOAT32_ULPS, assert_matches_reference

try:
    import torch
    import torch.nn.functional as F  # noqa: N812
except ImportError:  # the brute-force and refusal tests run all the same
    torch = None
live = pytest.mark.skipif(torch is None, reason="live PyTorch comparisons need torch (pip install torch==2.13.0)")


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _batch(seed: int, n: int = 6, t: int = 5, c: int = 3, blank: int = 0) -> dict[str, Any]:
    """Tiny random sequences for the brute force (C^T paths): targets of 0-3 labels with repeats,
    input lengths 1-T, padded past the end with a class that must not be read."""
    rng = np.random.default_rng(seed)
    classes = [k for k in range(c) if k != blank]
    targets = rng.integers(0, 4, n)
    targets[0], targets[1] = 0, 2
    labels = rng.choice(classes, (n, 3))
    labels[1, :2] = classes[0]  # a repeated label needs a blank between its two emissions
    inputs = rng.integers(1, t + 1, n)
    inputs[1] = t
    return {"logits": rng.normal(0, 1.5, (n, t, c)), "labels": labels, "inputs": inputs, "targets": targets}


@pytest.mark.parametrize("convention", ["keras", "torch"])
@pytest.mark.parametrize("blank", [0, 2])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_matches_the_brute_force_sum_over_alignments(convention: str, blank: int, seed: int) -> None:
    """Every sample against -log of the summed probability of the paths that collapse to its
    labels, enumerated one by one: repeats, empty targets, short inputs. Keras takes logits (its
    log-softmax), PyTorch log-probabilities as given."""
    batch = _batch(seed, blank=blank)
    log_p = _log_softmax(batch["logits"])
    predictions = batch["logits"] if convention == "keras" else log_p
    options = {"blank": blank, "input_lengths": batch["inputs"].tolist(), "target_lengths": batch["targets"].tolist()}
    if convention == "torch":
        options["zero_infinity"] = True
    result = compute("ctc", predictions, batch["labels"], options=options, convention=convention)  # type: ignore[arg-type]
    expected = [
        naive.ctc(log_p[i, : batch["inputs"][i]].tolist(), batch["labels"][i, : batch["targets"][i]].tolist(), blank)
        for i in range(len(log_p))
    ]
    possible = np.isfinite(expected)
    assert possible.sum() >= 4, "the batch should mostly hold possible alignments"
    np.testing.assert_allclose(result.per_sample[possible], np.asarray(expected)[possible], rtol=1e-12, atol=1e-15)
    if convention == "torch":  # zero_infinity: no alignment scores 0
        assert (result.per_sample[~possible] == 0).all()
    else:  # Keras's -1e5 for log 0: no alignment costs about 1e5 per missing step
        assert (result.per_sample[~possible] > 9e4).all()


def test_torch_takes_log_probabilities_as_given() -> None:
    """PyTorch does not normalise: log-probabilities shifted by k at every step shift the loss by -k T."""
    batch = _batch(4)
    log_p = _log_softmax(batch["logits"])
    options = {"target_lengths": batch["targets"].tolist(), "zero_infinity": True}
    plain = compute("ctc", log_p, batch["labels"], options=options, convention="torch")
    shifted = compute("ctc", log_p + 0.5, batch["labels"], options=options, convention="torch")
    possible = plain.per_sample > 0
    np.testing.assert_allclose(shifted.per_sample[possible], plain.per_sample[possible] - 0.5 * 5, rtol=1e-12)
    # Keras normalises its logits: the same shift changes nothing.
    keras_options = {"target_lengths": batch["targets"].tolist()}
    keras_plain = compute("ctc", log_p, batch["labels"], options=keras_options)
    keras_shifted = compute("ctc", log_p + 0.5, batch["labels"], options=keras_options)
    np.testing.assert_allclose(keras_shifted.per_sample, keras_plain.per_sample, rtol=1e-12)


def test_torch_mean_divides_each_loss_by_its_target_length() -> None:
    batch = _batch(5)
    log_p = _log_softmax(batch["logits"])
    options = {"target_lengths": batch["targets"].tolist(), "zero_infinity": True}
    result = compute("ctc", log_p, batch["labels"], options=options, convention="torch")
    quotients = result.per_sample / np.maximum(batch["targets"], 1)  # an empty target divides by 1
    assert result.mean == pytest.approx(quotients.mean(), rel=1e-14)
    assert result.sum == pytest.approx(quotients.sum(), rel=1e-14)
    assert (result.denominator, result.count) == (6.0, 6)
    # Weighted: sum(w l / L) / sum(w); per_sample carries w l as for every loss.
    weights = np.array([0.5, 2.0, 1.0, 0.0, 1.5, 1.0])
    weighted = compute("ctc", log_p, batch["labels"], options=options, sample_weight=weights, convention="torch")
    np.testing.assert_allclose(weighted.per_sample, weights * result.per_sample, rtol=1e-15)
    assert weighted.mean == pytest.approx((weights * quotients).sum() / weights.sum(), rel=1e-14)
    # A chunk weighted 0 throughout counts nothing; a whole batch so weighted is refused.
    nothing = np.zeros(6)
    chunk = compute(
        "ctc", log_p, batch["labels"], options=options, sample_weight=nothing, convention="torch", chunk=True
    )
    assert (chunk.mean, chunk.sum, chunk.denominator) == (0.0, 0.0, 0.0)
    with pytest.raises(LossInputError) as refused:
        compute("ctc", log_p, batch["labels"], options=options, sample_weight=nothing, convention="torch")
    assert (refused.value.field, refused.value.reason) == (
        "sample_weight",
        "the weights sum to 0; the mean would be 0/0",
    )
    # Keras's mean is the plain one.
    keras = compute("ctc", batch["logits"], batch["labels"], options={"target_lengths": batch["targets"].tolist()})
    assert keras.mean == pytest.approx(keras.per_sample.mean(), rel=1e-14)


@pytest.mark.parametrize("convention", ["keras", "torch"])
def test_chunks_recombine_the_mean(convention: str) -> None:
    batch = _batch(6, n=8)
    predictions = batch["logits"] if convention == "keras" else _log_softmax(batch["logits"])
    labels, inputs, targets = batch["labels"], batch["inputs"], batch["targets"]
    extra = {"zero_infinity": True} if convention == "torch" else {}

    def part(rows: slice) -> Any:
        options = {"input_lengths": inputs[rows].tolist(), "target_lengths": targets[rows].tolist(), **extra}
        return compute("ctc", predictions[rows], labels[rows], options=options, convention=convention)  # type: ignore[arg-type]

    whole, parts = part(slice(None)), [part(slice(0, 3)), part(slice(3, 8))]
    assert whole.mean == pytest.approx(sum(p.sum for p in parts) / sum(p.denominator for p in parts), rel=1e-14)


def test_padding_past_each_target_is_never_read() -> None:
    """Labels past a target's length may be anything, under both conventions."""
    batch = _batch(7)
    garbage = batch["labels"].copy()
    past = np.arange(3) >= batch["targets"][:, None]
    garbage[past] = np.random.default_rng(0).integers(-5, 99, past.sum())
    for convention in ("keras", "torch"):
        options = {"target_lengths": batch["targets"].tolist(), "zero_infinity": True}
        if convention == "keras":
            del options["zero_infinity"]
        clean = compute("ctc", batch["logits"], batch["labels"], options=options, convention=convention)  # type: ignore[arg-type]
        dirty = compute("ctc", batch["logits"], garbage, options=options, convention=convention)  # type: ignore[arg-type]
        np.testing.assert_allclose(dirty.per_sample, clean.per_sample, rtol=1e-15)


def test_default_lengths_are_full_inputs_and_the_labels_before_the_blank_padding() -> None:
    batch = _batch(8)
    padded = np.where(np.arange(3) < batch["targets"][:, None], batch["labels"], 0)
    given = {"target_lengths": batch["targets"].tolist(), "input_lengths": [5] * 6}
    for convention in ("keras", "torch"):
        extra = {"zero_infinity": True} if convention == "torch" else {}
        default = compute("ctc", batch["logits"], padded, options=extra, convention=convention)  # type: ignore[arg-type]
        explicit = compute("ctc", batch["logits"], padded, options={**given, **extra}, convention=convention)  # type: ignore[arg-type]
        np.testing.assert_array_equal(default.per_sample, explicit.per_sample)


def test_an_impossible_alignment_is_refused_under_torch_unless_zero_infinity() -> None:
    log_p = _log_softmax(np.random.default_rng(9).normal(0, 1, (3, 4, 3)))
    labels = [[1, 2, 0, 0], [1, 1, 1, 0], [2, 0, 0, 0]]  # 1 1 1 needs 5 steps, 4 are given
    with pytest.raises(LossInputError) as caught:
        compute("ctc", log_p, labels, convention="torch")
    assert (caught.value.field, caught.value.index) == ("labels", (1,))
    assert "zero_infinity" in caught.value.reason
    zeroed = compute("ctc", log_p, labels, options={"zero_infinity": True}, convention="torch")
    assert zeroed.per_sample[1] == 0.0
    # PyTorch's mean still counts the zeroed sample: (l0 / 2 + 0 + l2 / 1) / 3.
    assert zeroed.mean == pytest.approx((zeroed.per_sample[0] / 2 + zeroed.per_sample[2]) / 3, rel=1e-14)
    # One step short for a single sample: its input length alone makes it impossible.
    with pytest.raises(LossInputError) as short:
        compute("ctc", log_p[:1], labels[:1], options={"input_lengths": [1]}, convention="torch")
    assert short.value.index == (0,)


@pytest.mark.parametrize(
    ("predictions_shape", "labels", "options", "field", "index", "message"),
    [
        ((2, 4), [[1], [1]], {}, "predictions", (), "(N, T, C)"),
        ((2, 4, 3), [1, 1], {}, "labels", (), "(N, S)"),
        ((2, 4, 3), [[1], [1], [1]], {}, "labels", (), "(N, S) = (2, S)"),
        ((2, 4, 3), [[1] * 5, [1] * 5], {}, "labels", (), "longer than T"),
        ((2, 4, 3), [[1], [1]], {"blank": 3}, "options.blank", (), "[0, 2]"),
        ((2, 4, 3), [[1], [1]], {"input_lengths": [4, 4, 4]}, "options.input_lengths", (), "one value per sample (2)"),
        ((2, 4, 3), [[1], [1]], {"input_lengths": [4, 5]}, "options.input_lengths", (1,), "[0, T = 4]"),
        ((2, 4, 3), [[1], [1]], {"input_lengths": [-1, 4]}, "options.input_lengths", (0,), "[0, T = 4]"),
        ((2, 4, 3), [[1], [1]], {"target_lengths": [1, 2]}, "options.target_lengths", (1,), "[0, S = 1]"),
        ((2, 4, 3), [[1, 3], [1, 2]], {}, "labels", (0, 1), "outside the classes [0, 2]"),
        ((2, 4, 3), [[1, 2], [-1, 2]], {"target_lengths": [2, 1]}, "labels", (1, 0), "outside the classes"),
        ((2, 4, 3), [[1, 2], [2, 1]], {"blank": 1, "target_lengths": [1, 2]}, "labels", (0, 0), "is the blank"),
        ((2, 4, 3), [[1, 2], [0, 2]], {}, "labels", (1, 1), "follows the blank (0) padding"),
        ((2, 4, 3), [[1], [1]], {"zero_infinity": True}, "options.zero_infinity", (), "only under convention"),
    ],
)
def test_bad_input_is_refused_by_field_index_and_reason(
    predictions_shape: tuple[int, ...],
    labels: Any,
    options: dict[str, Any],
    field: str,
    index: tuple[int, ...],
    message: str,
) -> None:
    predictions = np.zeros(predictions_shape)
    with pytest.raises(LossInputError) as caught:
        compute("ctc", predictions, labels, options=options)
    assert (caught.value.field, caught.value.index) == (field, index)
    assert message in caught.value.reason


def test_work_beyond_the_step_and_lattice_budgets_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    labels = np.ones((4, 3), dtype=int)
    labels[:, 1] = 2
    predictions = np.zeros((4, 8, 3))
    assert compute("ctc", predictions, labels).count == 4  # 4 x 8 x 7 = 224 cells
    monkeypatch.setattr(ctc_module, "MAX_LATTICE_CELLS", 223)
    with pytest.raises(LossInputError, match="224 lattice cells; at most 223") as caught:
        compute("ctc", predictions, labels)
    assert caught.value.field == "predictions"
    monkeypatch.setattr(ctc_module, "MAX_TIME_STEPS", 7)
    with pytest.raises(LossInputError, match="8 time steps; at most 7"):
        compute("ctc", predictions, labels)


def test_per_sample_lengths_follow_the_batch_split_across_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three blocks, each with its own slice of input_lengths and target_lengths: bit for bit the
    single-threaded answer (a block given the whole lists would refuse or misread them)."""
    monkeypatch.setattr(parallel, "MIN_SPLIT_VALUES", 64)
    before = parallel.threads()
    rng = np.random.default_rng(10)
    n, t, c = 301, 6, 4
    logits = rng.normal(0, 1, (n, t, c))
    labels = rng.integers(1, c, (n, 3))
    inputs, targets = rng.integers(5, t + 1, n), rng.integers(0, 3, n)
    options = {"input_lengths": inputs.tolist(), "target_lengths": targets.tolist()}
    try:
        answers = {}
        for threads in (1, 3):
            parallel.set_threads(threads)
            answers[threads] = [
                compute("ctc", logits, labels, options=options, convention=convention)  # type: ignore[arg-type]
                for convention in ("keras", "torch")
            ]
        for one, three in zip(answers[1], answers[3], strict=True):
            assert one.per_sample.tobytes() == three.per_sample.tobytes()
            assert (one.mean, one.sum, one.denominator) == (three.mean, three.sum, three.denominator)
        # A list one too long would slice into three right-sized blocks: it is refused first.
        with pytest.raises(LossInputError, match="one value per sample"):
            compute("ctc", logits, labels, options={"input_lengths": [*inputs.tolist(), 6]})
    finally:
        parallel.set_threads(before)


# Live PyTorch: random alignments, both reductions, any blank, variable lengths, impossible ones.


@st.composite
def ctc_batches(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 9))
    t = draw(st.integers(1, 40))
    c = draw(st.integers(2, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    blank = int(rng.integers(0, c))
    width = int(rng.integers(1, t + 1))
    labels = rng.choice([k for k in range(c) if k != blank], (n, width))
    labels[rng.random((n, width)) < 0.2] = labels[0, 0]  # repeats
    logits = rng.normal(0, draw(st.sampled_from([0.3, 2.0, 8.0])), (n, t, c))
    dtype = draw(st.sampled_from(["float64", "float32"]))
    return {
        "loss": "ctc",
        "convention": "torch",
        "dtype": dtype,
        "predictions": _log_softmax(logits).astype(dtype).tolist(),
        "labels": labels.tolist(),
        "options": {
            "blank": blank,
            "input_lengths": rng.integers(0, t + 1, n).tolist(),
            "target_lengths": rng.integers(0, width + 1, n).tolist(),
            "zero_infinity": True,
        },
        # The recursion rounds at each step, as PyTorch's in the same order (see torch_cases._add_ctc).
        "extra_ulps": math.log2(t + 1),
    }


def _torch_ctc(case: dict[str, Any], reduction: str, zero_infinity: bool = True) -> Any:
    options = case["options"]
    log_probs = torch.tensor(case["predictions"], dtype=getattr(torch, case["dtype"])).transpose(0, 1)
    return F.ctc_loss(
        log_probs,
        torch.tensor(case["labels"], dtype=torch.long),
        options["input_lengths"],
        options["target_lengths"],
        blank=options["blank"],
        reduction=reduction,
        zero_infinity=zero_infinity,
    )


@live
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ctc_batches())
def test_matches_torch_live(case: dict[str, Any]) -> None:
    per_sample, mean = _torch_ctc(case, "none"), float(_torch_ctc(case, "mean"))
    quotients = per_sample / torch.tensor(case["options"]["target_lengths"], dtype=per_sample.dtype).clamp_min(1)
    assert_matches_reference(
        case, per_sample.tolist(), mean, convention="torch", weight=1.0, total=float(quotients.sum())
    )
    # Without zero_infinity: refused exactly where PyTorch says inf, else the same numbers.
    strict = {**case, "options": {**case["options"], "zero_infinity": False}}
    infinite = torch.isinf(_torch_ctc(case, "none", zero_infinity=False)).numpy()
    if infinite.any():
        with pytest.raises(LossInputError) as caught:
            compute(
                "ctc",
                strict["predictions"],
                strict["labels"],
                options=strict["options"],
                dtype=case["dtype"],
                convention="torch",
            )
        assert caught.value.index == (int(np.argmax(infinite)),)
    else:
        assert_matches_reference(strict, per_sample.tolist(), mean, convention="torch")


@live
def test_float32_is_as_close_to_torch_as_documented_on_long_sequences() -> None:
    """T = 200: float32 within 2 + log2(T + 1) ulp of PyTorch's float32 (measured at most 3)."""
    rng = np.random.default_rng(11)
    n, t, c = 6, 200, 20
    log_p = _log_softmax(rng.normal(0, 3, (n, t, c))).astype(np.float32)
    labels = rng.integers(1, c, (n, 60))
    case = {
        "loss": "ctc",
        "dtype": "float32",
        "predictions": log_p.tolist(),
        "labels": labels.tolist(),
        "options": {"blank": 0, "input_lengths": [t] * n, "target_lengths": rng.integers(0, 61, n).tolist()},
        "extra_ulps": math.log2(t + 1),
    }
    per_sample = _torch_ctc(case, "none", zero_infinity=False)
    assert_matches_reference(case, per_sample.tolist(), float(_torch_ctc(case, "mean", False)), convention="torch")
    assert FLOAT32_ULPS + math.log2(t + 1) < 10


@pytest.mark.anyio
async def test_the_http_api_takes_each_frameworks_option_names(client: Any) -> None:
    """Keras's names (output_length, target_length, mask_index) and PyTorch's reach the same
    options over HTTP; per-sample lists pass the option schema; the torch sum is the divided one."""
    batch = _batch(12)
    body = {"loss": "ctc_loss", "predictions": batch["logits"].tolist(), "labels": batch["labels"].tolist()}
    lengths = {"input_lengths": batch["inputs"].tolist(), "target_lengths": batch["targets"].tolist()}
    keras_names = {
        "output_length": lengths["input_lengths"],
        "target_length": lengths["target_lengths"],
        "mask_index": 0,
    }
    keras = (await client.post("/v1/loss", json={**body, "options": keras_names})).json()
    expected = compute("ctc", batch["logits"], batch["labels"], options=lengths)
    assert keras["loss"] == "ctc"
    assert keras["per_sample"] == expected.per_sample.tolist()
    torch_body = {**body, "convention": "torch", "options": {**lengths, "blank": 0, "zero_infinity": True}}
    answer = (await client.post("/v1/loss", json=torch_body)).json()
    per_sample = np.asarray(answer["per_sample"])
    assert answer["sum"] == pytest.approx((per_sample / np.maximum(batch["targets"], 1)).sum(), rel=1e-14)
    assert answer["mean"] == pytest.approx(answer["sum"] / answer["denominator"], rel=1e-15)
