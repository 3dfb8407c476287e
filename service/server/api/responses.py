"""Response helpers shared by the v1 routes: JSON responses, and their OpenAPI descriptions.

A loss result's JSON fields are its own (`LossResult.answer`, in `service.values.results`)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import Response

from service.server.api.body import ARROW_MEDIA_TYPE, NPZ_MEDIA_TYPE
from service.server.api.guards import REFUSALS

PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    for status, description in sorted(
        {
            400: "Malformed JSON, npz, Arrow or gzip body",
            415: "Unsupported Content-Type or Content-Encoding",
            422: "Invalid input: the errors name each field, index and reason",
            **REFUSALS,
        }.items()
    )
}


def json_body(schema: str, examples: dict[str, Any], binary: bool = False) -> dict[str, Any]:
    content: dict[str, Any] = {
        "application/json": {
            "schema": {"$ref": f"#/components/schemas/{schema}"},
            "examples": {name: {"value": value} for name, value in examples.items()},
        }
    }
    extra: dict[str, Any] = {}
    if binary:
        for media_type, what in ((NPZ_MEDIA_TYPE, "an npz archive"), (ARROW_MEDIA_TYPE, "an Arrow IPC stream")):
            content[media_type] = {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": f"{what} with arrays predictions, labels and optionally sample_weight; "
                    "the other fields as query parameters",
                }
            }
        extra["parameters"] = [
            {"name": name, "in": "query", "required": False, "schema": {"type": "string"}, "description": text}
            for name, text in BINARY_QUERY_PARAMETERS.items()
        ]
    return {"requestBody": {"required": True, "content": content}, **extra}


BINARY_QUERY_PARAMETERS = {
    "loss": "With a binary body: the loss (required).",
    "options": 'With a binary body: the options as a JSON object, e.g. {"from_logits": true}.',
    "dtype": "With a binary body: float64 or float32.",
    "convention": "With a binary body: keras, torch, xgboost, lightgbm or catboost.",
    "model": "With a binary body: the monitoring label.",
    "chunk": "With a binary body: true when the batch is one chunk of a larger one.",
}


def json_response(content: Any) -> Response:
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")
