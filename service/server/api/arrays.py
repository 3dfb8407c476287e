"""JSON arrays to NumPy in one step, with an exact location for anything that is not a number.

The fast path is a single `np.array(nested_list)` in C. Only when that fails, or yields a
non-numeric dtype, does a Python walk find the first offending element, so a valid
million-float body never pays for per-element checks.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import numpy as np
from pydantic import ValidationInfo
from pydantic.functional_validators import PlainValidator
from pydantic.json_schema import WithJsonSchema
from pydantic_core import PydanticCustomError

from service.engine.checks import first_nonfinite
from service.server.api.problems import ProblemError

# Set by the body parser when the raw JSON contains `true`/`false` tokens: NumPy would read a
# boolean beside numbers as 0/1, so those bodies take the exact walk instead.
BOOLEANS_PRESENT = "booleans_present"
MAX_ELEMENTS = "max_elements"
# Deeper arrays are refused before any recursive look at them (NumPy itself stops at 64).
MAX_DIMENSIONS = 32
NON_FINITE = "non_finite"


def kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _depth(value: Any) -> int:
    """How deeply lists nest, following first elements and stopping past the limit (no recursion)."""
    depth = 0
    while isinstance(value, list) and depth <= MAX_DIMENSIONS:
        depth += 1
        if not value:
            break
        value = value[0]
    return depth


def _expected_shape(value: Any) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _first_problem(value: Any, shape: list[int], path: tuple[int, ...] = ()) -> tuple[tuple[int, ...], str] | None:
    depth = len(path)
    if depth < len(shape):
        if not isinstance(value, list):
            return path, f"expected an array of {shape[depth]} elements, got {kind_of(value)}"
        if len(value) != shape[depth]:
            return path, f"ragged array: expected {shape[depth]} elements like its siblings, got {len(value)}"
        for i, item in enumerate(value):
            found = _first_problem(item, shape, (*path, i))
            if found:
                return found
        return None
    if not _is_number(value):
        return path, f"expected a number, got {kind_of(value)}"
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        return path, "integer is too large (beyond 64 bits)"
    return None


def _fail(value: Any) -> PydanticCustomError:
    found = _first_problem(value, _expected_shape(value))
    index, message = found if found else ((), "expected a (nested) array of numbers")
    return PydanticCustomError("array_value", message, {"index": list(index)})


def _too_many(count: int, limit: int) -> ProblemError:
    # Not a validation error: Pydantic lets other exceptions through, and this one is a 413.
    return ProblemError(413, f"an array holds {count:,} numbers; the limit is {limit:,} (LOSS_SERVICE_MAX_ELEMENTS)")


def _finite(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    # The engine's search (`first_nonfinite`); compute is told the arrays are searched (`inputs_finite`).
    index = first_nonfinite(array)
    if index is not None:
        raise PydanticCustomError(
            NON_FINITE,
            "numbers must be finite, got {value}",
            {"index": list(index), "value": repr(float(array[index]))},
        )
    return array


def to_array(value: Any, info: ValidationInfo) -> np.ndarray[Any, Any]:
    limit = (info.context or {}).get(MAX_ELEMENTS)
    if isinstance(value, np.ndarray):  # from a binary body (npz, Arrow)
        if limit is not None and value.size > limit:
            raise _too_many(value.size, limit)
        if value.dtype.kind not in "iuf":
            raise PydanticCustomError("array_type", f"expected numbers, got an array of {value.dtype}", {"index": []})
        if not value.flags.aligned:
            # A view of the body where an archive put it (npz members): NumPy's loops run slower
            # over misaligned data, by more than one aligned copy costs (docs/performance.md).
            value = np.require(value, requirements="A")
        return _finite(value)
    if not isinstance(value, list):
        raise PydanticCustomError("array_type", f"expected an array of numbers, got {kind_of(value)}", {"index": []})
    depth = _depth(value)
    if depth > MAX_DIMENSIONS:
        raise PydanticCustomError(
            "array_value", f"nested {depth}+ levels deep; at most {MAX_DIMENSIONS} dimensions", {"index": []}
        )
    if limit is not None:
        count = math.prod(_expected_shape(value))
        if count > limit:
            raise _too_many(count, limit)
    if info.context and info.context.get(BOOLEANS_PRESENT):
        problem = _first_problem(value, _expected_shape(value))
        if problem:
            raise PydanticCustomError("array_value", problem[1], {"index": list(problem[0])})
    try:
        array = np.array(value)
    except (ValueError, OverflowError, TypeError):
        raise _fail(value) from None
    if array.dtype.kind not in "fiu":
        raise _fail(value)
    return _finite(array)


NumericArray = Annotated[
    np.ndarray,
    PlainValidator(to_array),
    WithJsonSchema(
        {
            "type": "array",
            "minItems": 1,
            "items": {"anyOf": [{"type": "number"}, {"type": "array"}]},
            "description": "A rectangular (nested) array of finite numbers; the first axis is the batch.",
        },
        mode="validation",
    ),
]
