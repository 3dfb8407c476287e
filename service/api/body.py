"""Reading a JSON request body: content type, raw bytes, one validation pass."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, TypeAdapter, ValidationError

from service.api.arrays import BOOLEANS_PRESENT
from service.api.errors import ProblemError, validation_problem

JSON_MEDIA_TYPE = "application/json"
T = TypeVar("T")


async def read_json(request: Request) -> bytes:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != JSON_MEDIA_TYPE:
        shown = media_type or "none"
        raise ProblemError(415, f"Content-Type must be {JSON_MEDIA_TYPE}, got {shown}")
    body = await request.body()
    if not body.strip():
        raise ProblemError(400, "malformed JSON: the request body is empty")
    return body


def validate_json(schema: type[BaseModel] | TypeAdapter[Any], body: bytes) -> Any:
    """Parse and validate in one pass (pydantic-core's JSON parser, arrays straight to NumPy)."""
    context = {BOOLEANS_PRESENT: b"true" in body or b"false" in body}
    try:
        if isinstance(schema, TypeAdapter):
            return schema.validate_json(body, context=context)
        return schema.model_validate_json(body, context=context)
    except ValidationError as exc:
        raise validation_problem(exc) from None
