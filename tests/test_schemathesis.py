"""schemathesis against the app's served /openapi.json: every operation, ~30 examples each.

All of schemathesis's checks apply (no 5xx, documented status codes, content types and response
schemas, schema-violating requests refused) except `positive_data_acceptance`: a schema cannot say
that labels must be class indices below the class count, so schema-valid bodies can rightly get 422.
"""

from __future__ import annotations

import logging
import tempfile

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from service.app import create_app
from service.store import Store

app = create_app()
app.state.lifecycle = "ready"
# The lifespan (which opens the store) does not run under schemathesis's ASGI calls.
app.state.store = Store.open(f"sqlite:///{tempfile.mkdtemp(prefix='loss-service-schemathesis-')}/store.sqlite3")
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


# schemathesis cannot generate npz or Arrow bodies; tests/test_api_binary.py covers them.
@pytest.mark.filterwarnings("ignore:Skipped test cases with unsupported payload media types")
@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_conforms_to_its_schema(case: schemathesis.Case) -> None:
    logging.getLogger("loss_service.access").disabled = True  # hundreds of request lines are noise here
    response = case.call()
    case.validate_response(response, excluded_checks=[checks.positive_data_acceptance])
