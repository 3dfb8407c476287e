"""Binary bodies (npz, Arrow IPC stream): their arrays plus the query's fields, validated like JSON."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError

from service.server.api.arrays import MAX_ELEMENTS
from service.server.api.body.arrow import arrow_arrays
from service.server.api.body.formats import ARRAY_FIELDS, NPZ_MEDIA_TYPE
from service.server.api.body.npz import npz_arrays
from service.server.api.errors import validation_problem
from service.server.api.problems import ProblemError, clipped, shown


def validate_binary(
    schema: TypeAdapter[Any], media_type: str, body: bytes, query: Mapping[str, str], max_elements: int | None = None
) -> Any:
    """A binary body's arrays plus the query's fields, validated like a JSON body."""
    arrays = npz_arrays(body, max_elements) if media_type == NPZ_MEDIA_TYPE else arrow_arrays(body)
    unexpected = sorted(set(arrays) - set(ARRAY_FIELDS))
    if unexpected:
        raise ProblemError(
            422,
            f"body: unexpected array {shown(unexpected[0])}; expected {', '.join(ARRAY_FIELDS)}",
            errors=[
                {
                    "loc": ["body", clipped(unexpected[0])],
                    "msg": f"unexpected array; expected {', '.join(ARRAY_FIELDS)}",
                }
            ],
        )
    fields: dict[str, Any] = {key: value for key, value in query.items() if key not in ARRAY_FIELDS}
    for key in ("options", "chunk"):  # a JSON object and a JSON boolean, written in the query
        if key in fields:
            try:
                fields[key] = orjson.loads(fields[key])
            except orjson.JSONDecodeError as exc:
                raise ProblemError(400, f"query parameter {key}: malformed JSON: {exc}") from None
    try:
        return schema.validate_python({**fields, **arrays}, context={MAX_ELEMENTS: max_elements})
    except ValidationError as exc:
        problem = validation_problem(exc)
        for error in problem.errors or []:
            if error["loc"][1] not in ARRAY_FIELDS:
                error["loc"][0] = "query"  # with a binary body, every other field is a query parameter
        raise problem from None
