"""The element limit (LOSS_SERVICE_MAX_ELEMENTS): an array over it is refused with 413 before NumPy
allocates, in every body format: JSON, npz, /v1/evaluate, OIP JSON and OIP binary."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.config import Settings
from tests.api.test_api import problem
from tests.apps import app_client

pytestmark = pytest.mark.anyio


async def test_arrays_over_max_elements_get_413_before_numpy_allocates() -> None:
    import io

    async with app_client(Settings(max_elements=10)) as c:
        big = {"loss": "mse", "predictions": [[0.0] * 11], "labels": [[0.0] * 11]}
        body = problem(await c.post("/v1/loss", json=big), 413)
        assert body["detail"] == "an array holds 11 numbers; the limit is 10 (LOSS_SERVICE_MAX_ELEMENTS)"
        assert (
            await c.post("/v1/loss", json={**big, "predictions": [[0.0] * 10], "labels": [[0.0] * 10]})
        ).status_code == 200
        buffer = io.BytesIO()
        np.savez(buffer, predictions=np.zeros((1, 11)), labels=np.zeros((1, 11)))
        npz = await c.post(
            "/v1/loss", params={"loss": "mse"}, content=buffer.getvalue(), headers={"content-type": "application/x-npz"}
        )
        assert "LOSS_SERVICE_MAX_ELEMENTS" in problem(npz, 413)["detail"]
        evaluate = await c.post(
            "/v1/evaluate", json={**{k: v for k, v in big.items() if k != "loss"}, "losses": ["mse"]}
        )
        problem(evaluate, 413)
        tensor = {"name": "predictions", "shape": [1, 11], "datatype": "FP64", "data": [0.0] * 11}
        oip = await c.post("/v2/models/mse/infer", json={"inputs": [tensor]})
        assert oip.status_code == 413
        assert "LOSS_SERVICE_MAX_ELEMENTS" in oip.json()["error"]
        binary = {"name": "predictions", "shape": [1, 11], "datatype": "FP64", "parameters": {"binary_data_size": 88}}
        header = json.dumps({"inputs": [binary]}).encode()
        raw = await c.post(
            "/v2/models/mse/infer",
            content=header + bytes(88),
            headers={"inference-header-content-length": str(len(header))},
        )
        assert raw.status_code == 413
