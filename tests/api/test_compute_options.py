"""The options the compute use case hands the engine: for a catalogue loss, its options model's
fields, read without `model_dump()`, are what `model_dump()` gives, value and type."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from service.engine import catalogue, resolve
from service.option_models import options_model
from service.usecases import compute as compute_module

GIVEN = {
    "sparse_categorical_crossentropy": {"class_weight": {"1": 2}, "label_smoothing": 0, "ignore_class": 3},
    "binary_crossentropy": {"pos_weight": 2, "weight": [1, 0.5]},
}


def handed_to_engine(monkeypatch: pytest.MonkeyPatch, loss: str, options: Any) -> dict[str, Any]:
    handed: dict[str, Any] = {}

    def engine(name: str, predictions: Any, labels: Any, **kwargs: Any) -> Any:
        handed.update(kwargs["options"])
        return None

    monkeypatch.setattr(compute_module, "compute", engine)
    arrays = {"predictions": np.zeros(1), "labels": np.zeros(1), "sample_weight": None}
    batch = SimpleNamespace(**arrays, dtype="float64", convention="keras", chunk=False)
    compute_module.compute_loss(batch, loss, options)
    return handed


@pytest.mark.parametrize("spec", catalogue(), ids=lambda spec: spec.name)
def test_every_catalogue_loss_gets_its_options_as_model_dump_gives_them(
    monkeypatch: pytest.MonkeyPatch, spec: Any
) -> None:
    options = options_model(spec).model_validate(GIVEN.get(spec.name, {}))
    handed = handed_to_engine(monkeypatch, spec.name, options)
    dumped = options.model_dump()
    assert list(handed) == list(dumped) == [option.name for option in spec.options]
    assert handed == dumped
    assert [type(v) for v in handed.values()] == [type(v) for v in dumped.values()]


def test_options_given_reach_the_engine_as_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    options = options_model(resolve("binary_crossentropy")).model_validate(GIVEN["binary_crossentropy"])
    handed = handed_to_engine(monkeypatch, "binary_crossentropy", options)
    assert handed == {"from_logits": False, "label_smoothing": 0.0, "pos_weight": 2.0, "weight": [1.0, 0.5]}
    assert type(handed["pos_weight"]) is float
