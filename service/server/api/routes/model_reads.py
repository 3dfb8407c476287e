"""Delayed labels, reading: a model's history (losses, label coverage and delays by time and
segment, from `service.usecases.history`) and its joined pairs streamed as Arrow, CSV or NDJSON
(`service.usecases.export`), read among the store's read threads."""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator
from typing import Annotated, Any

from fastapi import Query, Request
from fastapi.responses import Response, StreamingResponse

from service.engine.calibration import MAX_BINS
from service.server.api.accept import negotiated
from service.server.api.headers import request_header
from service.server.api.history_schemas import History
from service.server.api.responses import PROBLEM_RESPONSES, json_response
from service.server.api.routes.models import NOT_FOUND, READ, TIME, ModelName, store_of
from service.server.api.routing import Routes
from service.usecases import export, history, upkeep

routes = Routes("/v1/models", tags=["delayed labels"])


@routes.get(
    "/{model}/history",
    policy=READ,
    summary="A model's losses, label coverage and label delays by prediction time (and segment)",
    response_model=History,
    response_model_exclude_unset=True,
    responses={**PROBLEM_RESPONSES, **NOT_FOUND},
)
async def model_history(
    model: ModelName,
    request: Request,
    start: Annotated[
        str | None, Query(description=f"{TIME} Default: 24 h before end, floored to a multiple of step.")
    ] = None,
    end: Annotated[str | None, Query(description=f"{TIME} Default: now.")] = None,
    step: Annotated[
        str | None, Query(description="Bucket width in seconds, at least 1 (default 3600); at most 10,000 buckets.")
    ] = None,
    by: Annotated[str | None, Query(description="A declared segment key: one entry per value in each bucket.")] = None,
    calibration: Annotated[
        str | None,
        Query(
            description="true: each bucket gains the calibration of its joined pairs, as POST /v1/calibration answers "
            'it (a model configured with "keep_pairs": true; the rows are read whatever the window). Default false.'
        ),
    ] = None,
    bins: Annotated[str | None, Query(description=f"With calibration: bins, 1 to {MAX_BINS} (default 15).")] = None,
    strategy: Annotated[str | None, Query(description="With calibration: uniform (default) or quantile bins.")] = None,
    from_logits: Annotated[
        str | None,
        Query(
            description="With calibration: true if the stored predictions are logits. Default: the first configured "
            "loss's from_logits option (false where it has none)."
        ),
    ] = None,
) -> Response:
    store = store_of(request)
    threads = upkeep.store_threads(request.app.state)
    return json_response(
        await threads.read(
            lambda: history.history(
                store,
                model,
                start=start,
                end=end,
                step=step,
                by=by,
                calibration=calibration,
                bins=bins,
                strategy=strategy,
                from_logits=from_logits,
            )
        )
    )


EXPORTED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The joined pairs, one row each, streamed in record batches (columns: docs/delayed-labels.md, "
        "'Exporting the pairs'). A store failure after the first batch ends the response without its last chunk.",
        "content": {media: {"schema": {"type": "string", "format": "binary"}} for media in export.MEDIA_TYPES.values()},
    },
    406: {
        "description": "Accept names none of application/vnd.apache.arrow.stream, text/csv, application/x-ndjson",
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    },
}


@routes.get(
    "/{model}/pairs",
    policy=READ,
    summary="A model's joined pairs (ids, times, weights, segments, losses, and kept payloads) as Arrow, CSV or NDJSON",
    response_class=StreamingResponse,
    responses={**PROBLEM_RESPONSES, **NOT_FOUND, **EXPORTED},
)
async def model_pairs(
    model: ModelName,
    request: Request,
    start: Annotated[str | None, Query(description=f"{TIME} Default: 24 h before end.")] = None,
    end: Annotated[str | None, Query(description=f"{TIME} Default: now.")] = None,
) -> Response:
    form = negotiated(request_header(request.scope, b"accept"), export.MEDIA_TYPES, "ndjson")
    store = store_of(request)
    threads = upkeep.store_threads(request.app.state)
    found = await threads.read(lambda: export.pairs(store, model, start=start, end=end, form=form))
    return StreamingResponse(_streamed(threads, found.chunks), media_type=found.media_type)


async def _streamed(threads: upkeep.StoreThreads, chunks: Generator[bytes, None, None]) -> AsyncIterator[bytes]:
    """Each chunk read on a store thread, one batch at a time: the event loop never waits on the
    store, and memory holds the batch being sent."""
    try:
        while True:
            chunk = await threads.read(lambda: next(chunks, None))
            if chunk is None:
                return
            yield chunk
    finally:
        chunks.close()  # no thread runs it now: a read in flight is waited for, never abandoned
