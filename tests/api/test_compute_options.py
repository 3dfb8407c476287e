"""The options the compute use case hands the engine: for a catalogue loss, its options model's
fields, read without `model_dump()`, are what `model_dump()` gives, value and type; for a library
metric, the options given and the name its library records. And the memory a batch reserves."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from service.engine import WORKING_ARRAYS, catalogue, libraries, resolve
from service.option_models import library_options_model, options_model
from service.usecases import compute as compute_module

GIVEN = {
    "sparse_categorical_crossentropy": {"class_weight": {"1": 2}, "label_smoothing": 0, "ignore_class": 3},
    "binary_crossentropy": {"pos_weight": 2, "weight": [1, 0.5]},
}


def handed_to_engine(
    monkeypatch: pytest.MonkeyPatch, loss: str, options: Any, convention: str = "keras"
) -> dict[str, Any]:
    """The options `compute_loss` hands the engine, and (as "(loss)", "(name)") the loss it names
    to the engine and the name it answers with."""
    handed: dict[str, Any] = {}

    def engine(name: str, predictions: Any, labels: Any, **kwargs: Any) -> Any:
        handed.update(kwargs["options"])
        handed["(loss)"] = name
        return None

    monkeypatch.setattr(compute_module, "compute", engine)
    arrays = {"predictions": np.zeros(1), "labels": np.zeros(1), "sample_weight": None}
    batch = SimpleNamespace(**arrays, dtype="float64", convention=convention, chunk=False)
    handed["(name)"] = compute_module.compute_loss(batch, loss, options)[0]
    return handed


@pytest.mark.parametrize("spec", catalogue(), ids=lambda spec: spec.name)
def test_every_catalogue_loss_gets_its_options_as_model_dump_gives_them(
    monkeypatch: pytest.MonkeyPatch, spec: Any
) -> None:
    options = options_model(spec).model_validate(GIVEN.get(spec.name, {}))
    handed = handed_to_engine(monkeypatch, spec.name, options)
    assert (handed.pop("(loss)"), handed.pop("(name)")) == (spec.name, spec.name)
    dumped = options.model_dump()
    assert list(handed) == list(dumped) == [option.name for option in spec.options]
    assert handed == dumped
    assert [type(v) for v in handed.values()] == [type(v) for v in dumped.values()]


def test_options_given_reach_the_engine_as_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    options = options_model(resolve("binary_crossentropy")).model_validate(GIVEN["binary_crossentropy"])
    handed = handed_to_engine(monkeypatch, "binary_crossentropy", options)
    assert (handed.pop("(loss)"), handed.pop("(name)")) == ("binary_crossentropy", "binary_crossentropy")
    assert handed == {"from_logits": False, "label_smoothing": 0.0, "pos_weight": 2.0, "weight": [1.0, 0.5]}
    assert type(handed["pos_weight"]) is float


def test_a_library_metric_gets_only_the_options_given_and_answers_under_its_librarys_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """XGBoost's `error` with threshold 0.7 is recorded as `error@0.7`; the engine gets the metric
    as asked for (naming the threshold twice would be refused) and none of the defaults."""
    model = library_options_model(libraries.lookup("xgboost", "error")[0])
    handed = handed_to_engine(monkeypatch, "error", model.model_validate({"threshold": 0.7}), "xgboost")
    assert handed == {"threshold": 0.7, "(loss)": "error", "(name)": "error@0.7"}


def test_a_batch_reserves_its_arrays_the_engines_working_arrays_and_each_losss_answer() -> None:
    """float32 predictions (4, 3): 48 bytes, int64 labels 32, float32 weights 16; the engine's
    WORKING_ARRAYS float32 arrays of 12 values; 32 bytes per answered value, per loss."""
    predictions, labels = np.zeros((4, 3), np.float32), np.zeros(4, np.int64)
    weighted = SimpleNamespace(
        predictions=predictions, labels=labels, sample_weight=np.ones(4, np.float32), dtype="float32"
    )
    working = 12 * 4 * WORKING_ARRAYS
    assert compute_module.compute_bytes(weighted, 2) == 48 + 32 + 16 + working + 2 * 12 * 32
    plain = SimpleNamespace(predictions=predictions, labels=labels, sample_weight=None, dtype="float32")
    assert compute_module.compute_bytes(plain) == 48 + 32 + working + 12 * 32
