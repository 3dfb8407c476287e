"""The delayed-labels routes' bodies and answers: row ids checked in one pass, the predictions and
labels logs, and what a log request answers (a model's configuration and status:
config_schemas.py; its history: history_schemas.py)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)
from pydantic.functional_validators import PlainValidator
from pydantic.json_schema import WithJsonSchema
from pydantic_core import PydanticCustomError

from service.option_models import UNKNOWN_KEYS as UNKNOWN_KEYS  # the error handler names them
from service.option_models import (
    few_unknown_keys,
)
from service.server.api.arrays import NumericArray, kind_of
from service.server.api.problems import shown
from service.server.api.schemas import LossResult

MAX_ID_LENGTH = 128


# Characters no id may hold: Unicode's control characters (general category Cc: C0 U+0000-U+001F,
# DEL U+007F, C1 U+0080-U+009F), which SQLite's JSON functions cut strings at (U+0000), PostgreSQL
# refuses in text (U+0000), and logs and terminals act upon; and lone surrogates (U+D800-U+DFFF),
# which are no characters and cannot be encoded (both JSON parsers already refuse them as malformed).
_REFUSED_IN_IDS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


# The same for the OpenAPI document (JSON strings hold no lone surrogates).
ID_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"


# Those of them that are ASCII (C0 and DEL), for `bytes.translate`.
_ASCII_CONTROLS = bytes(range(0x20)) + b"\x7f"


def _id_error(message: str, index: int) -> PydanticCustomError:
    return PydanticCustomError("row_id", message, {"index": [index]})


def _holds_refused(text: str) -> bool:
    """Whether `text` holds a character no id may hold. ASCII text (whose flag CPython keeps, so
    `isascii` is O(1)) is checked by `bytes.translate`, ~0.5 ns a character; other text by the
    regex, ~3 ns a character."""
    if text.isascii():
        data = text.encode("ascii")
        return len(data.translate(None, _ASCII_CONTROLS)) != len(data)
    return _REFUSED_IN_IDS.search(text) is not None


def _refused_character(text: str) -> str | None:
    """Why `text` cannot be an id because of a character it holds, or None."""
    found = _REFUSED_IN_IDS.search(text)
    if found is None:
        return None
    code = ord(found.group())
    if 0xD800 <= code <= 0xDFFF:
        return f"id contains the lone surrogate U+{code:04X}, which is no character"
    return f"id contains the control character U+{code:04X} (no id holds U+0000-U+001F or U+007F-U+009F)"


def to_ids(value: Any) -> list[str]:
    """Row ids as strings: a string of 1-128 characters, or a non-negative integer (7 is the id "7").
    An id repeated within one request is refused at its second occurrence, and so is a string
    holding a control character or a lone surrogate (`_REFUSED_IN_IDS`), at its index."""
    if not isinstance(value, list):
        raise PydanticCustomError("row_ids", "expected an array of ids, got {kind}", {"kind": kind_of(value)})
    if not value:
        raise PydanticCustomError("row_ids", "expected at least one id", {"index": []})
    # The common cases in one pass each: all strings, or all non-negative integers, none repeated.
    if all(type(item) is str and 0 < len(item) <= MAX_ID_LENGTH for item in value):
        # One pass over all of them; the slow path
        # names the index of a refused one.
        texts: list[str] = [] if _holds_refused("".join(value)) else value
    elif all(type(item) is int and item >= 0 for item in value):
        texts = [str(item) for item in value]
    else:
        texts = []
    if texts and len(set(texts)) == len(texts) and all(len(text) <= MAX_ID_LENGTH for text in texts):
        return texts
    ids: list[str] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(value):
        if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
            text = str(item)
        elif isinstance(item, str):
            text = item
        else:
            raise _id_error(
                f"an id is a string of 1-{MAX_ID_LENGTH} characters or a non-negative integer, got "
                + (shown(item) if isinstance(item, int | float) and not isinstance(item, bool) else kind_of(item)),
                index,
            )
        if not 1 <= len(text) <= MAX_ID_LENGTH:
            raise _id_error(f"an id has 1 to {MAX_ID_LENGTH} characters, this one {len(text):,}", index)
        refused = _refused_character(text)
        if refused is not None:
            raise _id_error(refused, index)
        if text in seen:
            raise _id_error(f"repeats the id at ids[{seen[text]}] ({shown(text)}); each id once per request", index)
        seen[text] = index
        ids.append(text)
    return ids


RowIds = Annotated[
    list[str],
    PlainValidator(to_ids),
    WithJsonSchema(
        {
            "type": "array",
            "minItems": 1,
            "items": {
                "anyOf": [
                    {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH, "pattern": ID_PATTERN},
                    {"type": "integer", "minimum": 0},
                ]
            },
            "description": "One id per row, each once: a string of 1-128 characters or a non-negative integer "
            '(the integer 7 is the id "7"). A string id holds no control characters (U+0000-U+001F, '
            "U+007F-U+009F).",
        },
        mode="validation",
    ),
]


class PredictionsLog(BaseModel):
    """Predictions to keep until their labels arrive."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _fields_only(cls, data: Any) -> Any:
        return few_unknown_keys(cls, data)

    ids: RowIds
    predictions: NumericArray = Field(description="One row per id; the model's first predictions fix the row shape.")
    timestamps: NumericArray | None = Field(
        default=None, description="When each prediction was made (Unix seconds); default: its arrival."
    )
    segments: dict[str, list[str | None]] | None = Field(
        default=None,
        description="Per segment key the model declares, one value per row: a string of 1-64 printable "
        "characters, or null. A declared key left out is null for every row.",
        examples=[{"country": ["BR", None]}],
    )


class LabelsLog(BaseModel):
    """Labels for predictions logged before or after them."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _fields_only(cls, data: Any) -> Any:
        return few_unknown_keys(cls, data)

    ids: RowIds
    labels: NumericArray = Field(description="One label row per id; the model's first labels fix the row shape.")
    sample_weight: NumericArray | None = Field(
        default=None, description="One weight >= 0 per label; a label without one counts with weight 1."
    )


class FollowerResult(BaseModel):
    model: str
    accepted: int = Field(description="Labels stored for it.")
    duplicates: int = Field(description="Labels whose id it already had.")
    joined: int = Field(description="Its pairs the labels completed.")
    pending_predictions: int
    pending_labels: int


class LogResult(BaseModel):
    accepted: int = Field(description="Rows stored by this request.")
    duplicates: int = Field(description="Rows whose id this side already had: counted, never stored again.")
    duplicate_ids: list[str] = Field(description="The first 100 of them.")
    joined: int = Field(description="Pairs this request completed.")
    joined_ids: list[str] = Field(description="Their ids, in request order; `per_sample` follows this order.")
    results: list[LossResult] = Field(description="Each configured loss over the pairs completed; empty if none.")
    pending_predictions: int
    pending_labels: int
    followers: list[FollowerResult] | None = Field(
        default=None,
        description="Labels only, where other models take their labels from this one (labels_from): what the same "
        "labels did for each, in the order they were configured. Absent otherwise.",
    )


class EventCountsStatus(BaseModel):
    pending: int = Field(description="Event halves waiting for their other half.")
    pending_bytes: int = Field(description="What they count towards LOSS_SERVICE_EVENT_MAX_PENDING_BYTES.")
    expired: int = Field(description="Halves that waited longer than LOSS_SERVICE_EVENT_TTL and were dropped.")


class EventResult(BaseModel):
    """What one CloudEvent of KServe's inference logger did."""

    id: str = Field(description="The event's Ce-Id, which its request and its response share.")
    type: Literal["request", "response"] = Field(description="Which half of the inference it carried.")
    outcome: Literal["pending", "logged", "duplicate", "not_needed"] = Field(
        description="`pending`: kept until the other half arrives; `logged`: the inference's rows went to the "
        "predictions log (`log`, as POST .../predictions answers); `duplicate`: this half was in already, nothing "
        "changed; `not_needed`: a request event where the response alone gives the predictions."
    )
    log: LogResult | None = Field(description="The predictions log's answer when `outcome` is `logged`.")
    events: EventCountsStatus = Field(description="The model's event halves after this event.")
