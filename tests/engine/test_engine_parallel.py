"""Large batches split across threads: bit for bit the single-threaded answer, the same errors."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from service.config import Settings
from service.engine import LossInputError, catalogue, compute, parallel
from service.server.app import create_app
from tests.engine.test_engine_memory import _inputs


@pytest.fixture
def split_small(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Batches of a few thousand values are split into 3 blocks of uneven sizes."""
    monkeypatch.setattr(parallel, "MIN_SPLIT_VALUES", 64)
    before = parallel.threads()
    yield
    parallel.set_threads(before)


@pytest.mark.parametrize("name", [spec.name for spec in catalogue()])
def test_every_loss_is_bit_identical_on_three_threads(name: str, split_small: None) -> None:
    spec = next(spec for spec in catalogue() if spec.name == name)
    rng = np.random.default_rng(5)
    predictions, labels = _inputs(name, spec.class_labels, rng)
    predictions, labels = predictions[:1001], labels[:1001]  # blocks of 333, 334, 334
    weights = rng.random(1001)
    compared = 0
    for convention, dtype, logits in itertools.product(("keras", "torch"), ("float64", "float32"), (False, True)):
        options = {"from_logits": True} if logits else {}
        answers = []
        for threads in (1, 3):
            parallel.set_threads(threads)
            try:
                answers.append(
                    compute(
                        name,
                        predictions,
                        labels,
                        options=options,
                        sample_weight=weights,
                        dtype=dtype,
                        convention=convention,
                    )  # type: ignore[arg-type]
                )
            except LossInputError:
                break  # an option this loss does not take, under either count
        if len(answers) == 2:
            one, three = answers
            assert one.per_sample.tobytes() == three.per_sample.tobytes(), (convention, dtype, logits)
            assert (one.mean, one.sum, one.count, one.denominator) == (
                three.mean,
                three.sum,
                three.count,
                three.denominator,
            )
            compared += 1
    assert compared >= 2


def test_the_batch_is_really_split(split_small: None, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks: list[int] = []
    real = parallel._joined

    def recording(parts: list[parallel.LossValues]) -> parallel.LossValues:
        blocks.extend(part.values.shape[0] for part in parts)
        return real(parts)

    monkeypatch.setattr(parallel, "_joined", recording)
    parallel.set_threads(3)
    compute("mse", np.ones((1001, 4)), np.zeros((1001, 4)))
    assert blocks == [333, 334, 334]
    blocks.clear()
    compute("log_loss", np.full(1001, 0.5), np.arange(1001) % 2)  # reads the whole batch: never split
    assert blocks == []


def test_a_problem_in_a_later_block_is_reported_as_one_thread_reports_it(split_small: None) -> None:
    rng = np.random.default_rng(6)
    probabilities = rng.random((1001, 4))
    labels = rng.integers(0, 4, 1001)
    labels[900] = 7  # in the third block
    probabilities[500, 2] = 1.5  # in the second: one thread checks the labels first
    errors = []
    for threads in (1, 3):
        parallel.set_threads(threads)
        with pytest.raises(LossInputError) as caught:
            compute("scce", probabilities, labels, convention="torch")
        errors.append((caught.value.field, caught.value.reason, caught.value.index))
    assert errors[0] == errors[1]


@pytest.mark.parametrize(("cpu_max", "expected"), [("max 100000\n", None), ("150000 100000\n", 2), ("50000 100000", 1)])
def test_cores_follow_the_cgroup_quota(
    cpu_max: str, expected: int | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cpu.max").write_text(cpu_max)
    monkeypatch.setattr(parallel, "CGROUP_CPU_MAX", tmp_path / "cpu.max")
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda _: {0, 1, 2, 3})
    assert parallel.available_cores() == (expected or 4)


def test_the_setting_and_its_default_divided_among_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    before = parallel.threads()
    try:
        monkeypatch.setattr("service.server.app.available_cores", lambda: 8)
        create_app(Settings(engine_threads=3))
        assert parallel.threads() == 3
        create_app(Settings(workers=2))
        assert parallel.threads() == 4
        create_app(Settings(workers=16))
        assert parallel.threads() == 1
    finally:
        parallel.set_threads(before)
