"""Champion and challenger: one loss of two models paired id by id over the ids both joined
(`service.usecases.comparisons`), read in a worker thread among the store's reads."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query, Request
from fastapi.responses import Response

from service.server.api.access import authorize
from service.server.api.comparison_schemas import Comparison
from service.server.api.policy import context_of
from service.server.api.responses import PROBLEM_RESPONSES, json_response
from service.server.api.routes.models import NOT_FOUND, READ, TIME, ModelName, store_of
from service.server.api.routing import Routes
from service.server.api.schemas import MODEL_LABEL_PATTERN
from service.usecases import comparisons, upkeep

routes = Routes("/v1/models", tags=["delayed labels"])

ChampionName = Annotated[
    str, Path(pattern=MODEL_LABEL_PATTERN, description="The model compared with (1-64 of A-Z a-z 0-9 _ . : -).")
]


@routes.get(
    "/{model}/compare/{champion}",
    policy=READ,
    summary="Champion and challenger: the paired difference of one loss over the ids both joined",
    description="Ids whose challenger prediction was made in [start, end) and that both models joined; each model's "
    "mean as /v1/loss gives it over them, and the mean difference (challenger minus champion) with a 1 - alpha "
    "anytime-valid confidence sequence: read it after every batch, its verdict is false at most alpha of the time "
    "(docs/comparisons.md). The key needs the read scope on both models.",
    response_model=Comparison,
    response_model_exclude_unset=True,
    responses={**PROBLEM_RESPONSES, **NOT_FOUND},
)
async def compare_models(
    model: ModelName,
    champion: ChampionName,
    request: Request,
    start: Annotated[str | None, Query(description=f"{TIME} Default: 24 h before end.")] = None,
    end: Annotated[str | None, Query(description=f"{TIME} Default: now.")] = None,
    loss: Annotated[
        str | None,
        Query(
            description="The challenger's loss, by index or name, which the champion configures identically "
            "(default: the first such)."
        ),
    ] = None,
    by: Annotated[str | None, Query(description="A segment key of the challenger: one comparison per value.")] = None,
    alpha: Annotated[str | None, Query(description="Strictly between 0 and 1 (default 0.05).")] = None,
    step: Annotated[
        str | None,
        Query(description="Seconds, at least 1: adds `sequence`, the comparison as it stood at each step's end."),
    ] = None,
) -> Response:
    authorize(context_of(request.scope).principal, champion)
    store = store_of(request)
    threads = upkeep.store_threads(request.app.state)
    return json_response(
        await threads.read(
            lambda: comparisons.compare(
                store, model, champion, start=start, end=end, loss=loss, by=by, alpha=alpha, step=step
            )
        )
    )
