"""Reading request bodies: content type, raw bytes, one validation pass.

JSON bodies carry every field. Binary bodies (npz, Arrow IPC stream) carry the arrays
`predictions`, `labels` and optionally `sample_weight`; the other fields come as query
parameters, `options` as a JSON object. Both go through the same Pydantic models.
"""

from service.server.api.body.binary import validate_binary
from service.server.api.body.estimate import decoded_bytes, json_decoded_bytes
from service.server.api.body.formats import ARROW_MEDIA_TYPE, BATCH_MEDIA_TYPES, JSON_MEDIA_TYPE, NPZ_MEDIA_TYPE
from service.server.api.body.json import RepeatedKeyError, collector_paused, loads, validate_json
from service.server.api.body.receive import Body, read_body, read_body_aligned, received_body

__all__ = [
    "ARROW_MEDIA_TYPE",
    "BATCH_MEDIA_TYPES",
    "JSON_MEDIA_TYPE",
    "NPZ_MEDIA_TYPE",
    "Body",
    "RepeatedKeyError",
    "collector_paused",
    "decoded_bytes",
    "json_decoded_bytes",
    "loads",
    "read_body",
    "read_body_aligned",
    "received_body",
    "validate_binary",
    "validate_json",
]
