"""openapi.json is generated from the app; this fails when the committed file is stale."""

from __future__ import annotations

import json
from pathlib import Path

from service.server.app import create_app

COMMITTED = Path(__file__).resolve().parents[2] / "openapi.json"


def test_committed_openapi_matches_the_app() -> None:
    generated = create_app().openapi()
    committed = json.loads(COMMITTED.read_text())
    assert committed == json.loads(json.dumps(generated)), "openapi.json is stale: run `make openapi`"


def test_openapi_has_a_schema_per_loss_options_and_examples() -> None:
    schema = create_app().openapi()
    components = schema["components"]["schemas"]
    assert {"SparseCategoricalCrossentropyOptions", "BinaryCrossentropyOptions", "LossRequest", "Problem"} <= set(
        components
    )
    # One branch per catalogue loss (its convention keras or torch) and per library metric (its
    # convention that library): `loss` and `convention` together pick one, so jsonschema's oneOf
    # holds where an OpenAPI discriminator (one property) cannot say it.
    branches = [ref["$ref"].rsplit("/", 1)[1] for ref in components["LossRequest"]["oneOf"]]
    assert {"BinaryCrossentropyRequest", "LoglossXgboostRequest", "TweedieNloglikXgboostRequest"} <= set(branches)
    logloss = components["LoglossXgboostRequest"]
    assert logloss["properties"]["convention"]["const"] == "xgboost"
    assert "margin" in components[logloss["properties"]["options"]["$ref"].rsplit("/", 1)[1]]["properties"]
    assert components["BinaryCrossentropyRequest"]["properties"]["convention"]["enum"] == ["keras", "torch"]
    body = schema["paths"]["/v1/loss"]["post"]["requestBody"]["content"]["application/json"]
    assert "sparse_categorical_crossentropy" in body["examples"]
