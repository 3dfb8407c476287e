"""The v1 HTTP contract through httpx.ASGITransport: answers, and one test per error class."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.anyio

SCCE = {
    "loss": "sparse_categorical_crossentropy",
    "predictions": [[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]],
    "labels": [1, 2],
}


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    assert body["type"] == "about:blank"
    assert "Traceback" not in response.text
    return body


async def test_loss_returns_the_documented_answer(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/loss", json={**SCCE, "options": {"from_logits": False}, "model": "fraud-v3"})
    assert response.status_code == 200
    assert response.json() == {
        "loss": "sparse_categorical_crossentropy",
        "per_sample": pytest.approx([0.0512932943875505, 2.302585092994045], rel=1e-15),
        "mean": pytest.approx(1.176939193690798, rel=1e-15),
        "sum": pytest.approx(2.353878387381596, rel=1e-15),
        "count": 2,
        "denominator": 2.0,
        "aggregate": "mean",
        "dtype": "float64",
        "convention": "keras",
    }


async def test_float32_answer_is_the_frameworks_float32_number(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/loss", json={**SCCE, "dtype": "float32"})
    assert response.json()["mean"] == 1.1769392490386963


@pytest.mark.parametrize("alias", ["mse", "bce", "cce", "scce", "mae"])
async def test_aliases_resolve_to_catalogue_names(client: httpx.AsyncClient, alias: str) -> None:
    labels: Any = [[1.0, 0.0]] if alias != "scce" else [0]
    response = await client.post("/v1/loss", json={"loss": alias, "predictions": [[0.6, 0.4]], "labels": labels})
    assert response.status_code == 200, response.text
    assert response.json()["loss"] != alias


async def test_torch_convention_keeps_the_unreduced_shape(client: httpx.AsyncClient) -> None:
    body = {
        "loss": "mse",
        "predictions": [[1.0, 2.0], [3.0, 5.0]],
        "labels": [[1.0, 4.0], [3.0, 4.0]],
        "convention": "torch",
    }
    answer = (await client.post("/v1/loss", json=body)).json()
    assert answer["per_sample"] == [[0.0, 4.0], [0.0, 1.0]]
    assert answer["mean"] == 1.25
    assert answer["count"] == 4


async def test_evaluate_returns_one_result_per_loss_in_order(client: httpx.AsyncClient) -> None:
    body = {
        "predictions": [[2.0, 0.5, -1.0], [0.1, 1.2, 0.3]],
        "labels": [0, 1],
        "convention": "torch",
        "losses": [
            {"loss": "scce", "options": {"from_logits": True}},
            {"loss": "scce", "options": {"from_logits": True, "label_smoothing": 0.1}},
        ],
    }
    results = (await client.post("/v1/evaluate", json=body)).json()["results"]
    assert [r["loss"] for r in results] == ["sparse_categorical_crossentropy"] * 2
    assert results[0]["mean"] < results[1]["mean"]


async def test_catalogue_lists_every_loss_with_formula_shapes_and_options(client: httpx.AsyncClient) -> None:
    losses = (await client.get("/v1/losses")).json()["losses"]
    by_name = {entry["name"]: entry for entry in losses}
    assert {"binary_crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy"} <= set(by_name)
    scce = by_name["sparse_categorical_crossentropy"]
    assert "scce" in scce["aliases"]
    assert scce["formula"]
    assert scce["shapes"]
    assert scce["follows"]
    options = {o["name"]: o for o in scce["options"]}
    assert options["label_smoothing"]["range"] == ">= 0 and <= 1"
    assert options["ignore_index"]["aliases"] == ["ignore_class"]
    assert (await client.get("/v1/losses/bce")).json()["name"] == "binary_crossentropy"


async def test_catalogue_says_which_batches_split_and_which_options_go_with_a_chunk(client: httpx.AsyncClient) -> None:
    """What a client needs to cut a batch into chunks without changing its numbers."""
    by_name = {entry["name"]: entry for entry in (await client.get("/v1/losses")).json()["losses"]}
    whole = {name: (entry["whole_batch"], entry["separable_with"]) for name, entry in by_name.items()}
    assert whole["log_loss"] == whole["brier_score"] == (True, ["classes"])
    assert whole["circle"] == (True, [])
    assert whole["mean_squared_error"] == (False, [])
    per_sample = {(name, o["name"]) for name, entry in by_name.items() for o in entry["options"] if o["per_sample"]}
    assert per_sample == {("ctc", "input_lengths"), ("ctc", "target_lengths")}


async def test_health_endpoints(client: httpx.AsyncClient) -> None:
    assert (await client.get("/livez")).json() == {"status": "ok"}
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}


async def test_readyz_is_503_before_startup() -> None:
    from service.server.app import create_app

    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://x") as fresh:
        response = await fresh.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "starting"}


async def test_the_loss_requests_validator_is_built_before_the_worker_is_ready(tmp_path: Any) -> None:
    """Building it takes about a tenth of a second of CPU: a worker's first /v1/loss must not pay it."""
    from service.config import Settings
    from service.server.api.schemas import loss_request_adapter
    from service.server.app import create_app

    loss_request_adapter.cache_clear()
    app = create_app(Settings(store_url=f"sqlite:///{tmp_path}/store.sqlite3"))
    async with app.router.lifespan_context(app):
        assert loss_request_adapter.cache_info().currsize == 1
        assert app.state.lifecycle == "ready"


async def test_unknown_loss_lists_the_valid_names(client: httpx.AsyncClient) -> None:
    body = problem(await client.post("/v1/loss", json={**SCCE, "loss": "hubber"}), 422)
    assert body["errors"][0]["loc"] == ["body", "loss"]
    assert "unknown loss 'hubber'" in body["errors"][0]["msg"]
    assert "'mean_squared_error'" in body["errors"][0]["msg"]


async def test_unknown_option_is_named(client: httpx.AsyncClient) -> None:
    body = problem(await client.post("/v1/loss", json={**SCCE, "options": {"delta": 1.0}}), 422)
    assert body["errors"] == [{"loc": ["body", "options", "delta"], "msg": "Extra inputs are not permitted"}]


async def test_option_of_the_wrong_type_is_not_coerced(client: httpx.AsyncClient) -> None:
    body = problem(await client.post("/v1/loss", json={**SCCE, "options": {"from_logits": "true"}}), 422)
    assert body["errors"][0]["loc"] == ["body", "options", "from_logits"]


async def test_ragged_array_names_the_row(client: httpx.AsyncClient) -> None:
    body = problem(await client.post("/v1/loss", json={**SCCE, "predictions": [[0.1, 0.9], [0.5]]}), 422)
    assert body["errors"] == [
        {"loc": ["body", "predictions", 1], "msg": "ragged array: expected 2 elements like its siblings, got 1"}
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [(True, "got a boolean"), ("0.5", "got a string"), (None, "got null"), ({"a": 1}, "got an object")],
)
async def test_non_numbers_in_arrays_are_located(client: httpx.AsyncClient, value: Any, message: str) -> None:
    body = problem(
        await client.post("/v1/loss", json={**SCCE, "predictions": [[0.05, 0.95, 0.0], [0.1, value, 0.1]]}), 422
    )
    assert body["errors"][0]["loc"] == ["body", "predictions", 1, 1]
    assert message in body["errors"][0]["msg"]


async def test_shape_mismatch(client: httpx.AsyncClient) -> None:
    body = problem(await client.post("/v1/loss", json={**SCCE, "labels": [1, 2, 0]}), 422)
    assert body["errors"][0]["loc"] == ["body", "labels"]
    assert "should be [2]" in body["errors"][0]["msg"]


async def test_label_out_of_range(client: httpx.AsyncClient) -> None:
    body = problem(await client.post("/v1/loss", json={**SCCE, "labels": [1, 3]}), 422)
    assert body["errors"] == [{"loc": ["body", "labels", 1], "msg": "class label 3 is outside [0, 2]"}]


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
async def test_non_finite_numbers_are_rejected(client: httpx.AsyncClient, literal: bytes) -> None:
    raw = b'{"loss": "mse", "predictions": [[1.0, ' + literal + b']], "labels": [[1.0, 1.0]]}'
    response = await client.post("/v1/loss", content=raw, headers={"content-type": "application/json"})
    body = problem(response, 422)
    assert body["errors"][0]["loc"] == ["body", "predictions", 0, 1]
    assert "finite" in body["errors"][0]["msg"]


async def test_probabilities_outside_unit_interval(client: httpx.AsyncClient) -> None:
    body = problem(
        await client.post("/v1/loss", json={**SCCE, "predictions": [[0.05, 1.95, 0.0], [0.1, 0.8, 0.1]]}), 422
    )
    assert body["errors"][0]["loc"] == ["body", "predictions", 0, 1]
    assert "probabilities (from_logits is false) must lie in [0, 1]" in body["errors"][0]["msg"]


async def test_empty_batch(client: httpx.AsyncClient) -> None:
    body = problem(await client.post("/v1/loss", json={"loss": "mse", "predictions": [], "labels": []}), 422)
    assert "empty" in body["detail"]


async def test_wrong_content_type_is_415(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/loss", content=b"{}", headers={"content-type": "text/plain"})
    assert "application/json" in problem(response, 415)["detail"]


async def test_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/loss", content=b'{"loss": "mse", "predictions": [1,', headers={"content-type": "application/json"}
    )
    assert problem(response, 400)["detail"].startswith("malformed JSON")


async def test_missing_fields_are_listed(client: httpx.AsyncClient) -> None:
    body = problem(await client.post("/v1/loss", json={"loss": "mse"}), 422)
    assert {tuple(e["loc"]) for e in body["errors"]} == {("body", "predictions"), ("body", "labels")}


async def test_invalid_model_label(client: httpx.AsyncClient) -> None:
    body = problem(await client.post("/v1/loss", json={**SCCE, "model": "a b/c"}), 422)
    assert body["errors"][0]["loc"] == ["body", "model"]


async def test_option_error_in_evaluate_names_the_loss_position(client: httpx.AsyncClient) -> None:
    body = {
        "predictions": [[0.5]],
        "labels": [[1.0]],
        "losses": [{"loss": "mse"}, {"loss": "bce", "options": {"pos_weight": [2.0]}}],
    }
    errors = problem(await client.post("/v1/evaluate", json=body), 422)["errors"]
    assert errors[0]["loc"] == ["body", "losses", 1, "options", "pos_weight"]


async def test_unknown_route_and_method_are_problems(client: httpx.AsyncClient) -> None:
    problem(await client.get("/v1/nothing"), 404)
    problem(await client.get("/v1/loss"), 405)
    problem(await client.get("/v1/losses/nothing"), 404)


async def test_chunk_flag_turns_an_all_ignored_torch_batch_into_denominator_zero(client: httpx.AsyncClient) -> None:
    body = {"loss": "scce", "predictions": [[1.0, 2.0]], "labels": [-100], "options": {"from_logits": True}}
    problem(await client.post("/v1/loss", json={**body, "convention": "torch"}), 422)
    answer = (await client.post("/v1/loss", json={**body, "convention": "torch", "chunk": True})).json()
    assert (answer["mean"], answer["denominator"], answer["per_sample"]) == (0.0, 0.0, [0.0])
