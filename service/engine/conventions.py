"""The numerical conventions the engine reproduces, and the constants they are built on.

Two frameworks, whose conventions apply to every catalogue loss (keras, torch), and three
gradient-boosting libraries, whose conventions apply to their own evaluation metrics
(`service.engine.libraries`): under a library convention the loss is the library's metric name.
"""

from __future__ import annotations

from typing import Literal, get_args

Framework = Literal["keras", "torch"]
Library = Literal["xgboost", "lightgbm", "catboost"]
Convention = Literal[Framework, Library]
FRAMEWORKS: tuple[Framework, ...] = get_args(Framework)
LIBRARIES: tuple[Library, ...] = get_args(Library)
CONVENTIONS: tuple[Convention, ...] = (*FRAMEWORKS, *LIBRARIES)

DType = Literal["float64", "float32"]
DTYPES: tuple[DType, ...] = get_args(DType)

# keras.backend.epsilon(): probabilities are clipped to [EPSILON, 1 - EPSILON] before a log.
KERAS_EPSILON = 1e-7
# torch.nn.functional.binary_cross_entropy clamps each log term at -100 instead of clipping.
TORCH_LOG_CLAMP = -100.0
# torch.nn.CrossEntropyLoss / NLLLoss default for `ignore_index`.
TORCH_IGNORE_INDEX = -100


def class_axis(convention: Convention) -> int:
    """Keras keeps classes on the last axis (N, ..., C); PyTorch on axis 1 (N, C, ...)."""
    return -1 if convention == "keras" else 1
