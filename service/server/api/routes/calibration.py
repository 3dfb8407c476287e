"""`POST /v1/calibration`: reliability bins, ECE, MCE and the CORP Brier decomposition of one batch,
stateless (`service.engine.calibration` computes and documents them)."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import Response

from service.engine.calibration import calibration, working_bytes
from service.server.api.access import authorize
from service.server.api.batches import off_loop, reserve
from service.server.api.body import json_decoded_bytes, read_body, validate_json
from service.server.api.calibration_schemas import CalibrationRequest, CalibrationResult
from service.server.api.policy import RequestContext, RoutePolicy, context_of
from service.server.api.problems import ProblemError
from service.server.api.responses import PROBLEM_RESPONSES, json_body, json_response
from service.server.api.routing import Routes
from service.server.monitoring import Monitor

routes = Routes("/v1", tags=["calibration"])
COMPUTE = RoutePolicy(scope="compute", heavy=True)

EXAMPLES = {
    "binary": {"predictions": [0.2, 0.7, 0.9, 0.4], "labels": [0, 0, 1, 1], "bins": 2},
    "three_classes_logits": {
        "predictions": [[2.0, 0.5, -1.0], [0.1, 1.2, 0.3], [0.0, 0.2, 2.5]],
        "labels": [0, 2, 2],
        "from_logits": True,
        "bins": 10,
        "strategy": "quantile",
    },
}


def _calibrate(body: bytes, monitor: Monitor, limit: int, context: RequestContext) -> dict[str, Any]:
    try:
        request = validate_json(CalibrationRequest, body, limit)
    except ProblemError as problem:
        monitor.record_nonfinite(problem.nonfinite_fields)
        raise
    predictions, labels = request.predictions, request.labels
    authorize(context.principal, None, int(predictions.size + labels.size))
    reserve(context, working_bytes(int(predictions.size), len(predictions)), "this request")
    context.batch_size = len(predictions)
    result = calibration(
        predictions, labels, from_logits=request.from_logits, bins=request.bins, strategy=request.strategy
    )
    return result.answer()


@routes.post(
    "/calibration",
    policy=COMPUTE,
    summary="Calibration of one batch: reliability bins, ECE, MCE and the CORP Brier decomposition",
    description="One column of probabilities of class 1 (labels 0/1), or C columns of class probabilities (labels "
    "class indices; top-label confidence and accuracy); logits with from_logits. The bins are scikit-learn's "
    "calibration_curve's, ECE and MCE TorchMetrics' norm l1 and max over them, and the Brier score splits by "
    "isotonic (PAV) recalibration into miscalibration - discrimination + uncertainty (docs/api.md).",
    response_model=CalibrationResult,
    responses=PROBLEM_RESPONSES,
    openapi_extra=json_body("CalibrationRequest", EXAMPLES),
)
async def calibration_metrics(request: Request) -> Response:
    _, body = await read_body(request)
    monitor = request.app.state.monitor
    limit = request.app.state.settings.max_elements
    context = context_of(request.scope)
    result = await off_loop(
        request,
        len(body),
        lambda: json_decoded_bytes(body),
        lambda: _calibrate(body, monitor, limit, context),
    )
    return json_response(result)
