"""The floor of any NumPy loss endpoint: the small benchmark's cross-entropy with nothing checked.

It parses the body, computes -log_softmax(x)[t] with six NumPy calls and answers the per-sample
losses and their mean: no validation, no options, no metrics, no guards, no error handling. What
loss-service adds to a small request is measured against it and against the bare app.
"""

from __future__ import annotations

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

app = FastAPI()


@app.post("/v1/loss")
async def unvalidated_cross_entropy(request: Request) -> Response:
    data = orjson.loads(await request.body())
    logits = np.asarray(data["predictions"], dtype=np.float64)
    targets = np.asarray(data["labels"], dtype=np.intp)
    shifted = logits - logits.max(axis=1, keepdims=True)
    losses = np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(len(targets)), targets]
    answer = {"per_sample": losses, "mean": float(losses.mean())}
    return Response(orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")
