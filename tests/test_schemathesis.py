"""schemathesis against the app's served /openapi.json: every operation, ~30 examples each.

All of schemathesis's checks apply (no 5xx, documented status codes, content types and response
schemas, schema-violating requests refused) except `positive_data_acceptance`: a schema cannot say
that labels must be class indices below the class count, so schema-valid bodies can rightly get 422.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from service.api.access import digest
from service.app import create_app
from service.config import Settings
from service.store import Store


@pytest.fixture(autouse=True)
def quiet() -> Iterator[None]:
    """Hundreds of access and audit lines are noise here; other modules' tests read them, so restore."""
    loggers = [logging.getLogger(name) for name in ("loss_service.access", "loss_service.audit")]
    for logger in loggers:
        logger.disabled = True
    yield
    for logger in loggers:
        logger.disabled = False


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
    response = case.call()
    case.validate_response(response, excluded_checks=[checks.positive_data_acceptance])


# The same operations under scoped keys: a key limited to compute and to models "team-*", with a
# budget of 50 requests a second, so that 401, 403 and 429 answers are generated and checked too.
keyed_directory = Path(tempfile.mkdtemp(prefix="loss-service-schemathesis-keys-"))
(keyed_directory / "keys.toml").write_text(
    f'[[keys]]\nname = "team"\nkey_sha256 = "{digest("team-key")}"\nscopes = ["compute"]\nmodels = ["team-*"]\n'
    "requests_per_second = 50\n"
)
keyed_app = create_app(Settings(api_keys_file=str(keyed_directory / "keys.toml"), metrics_auth=True))
keyed_app.state.lifecycle = "ready"
keyed_app.state.store = Store.open(f"sqlite:///{keyed_directory}/store.sqlite3")
keyed_schema = schemathesis.openapi.from_asgi("/openapi.json", keyed_app)


@pytest.mark.filterwarnings("ignore:Skipped test cases with unsupported payload media types")
@keyed_schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_conforms_to_its_schema_under_a_scoped_key(case: schemathesis.Case) -> None:
    response = case.call(headers={"authorization": "Bearer team-key"})
    case.validate_response(response, excluded_checks=[checks.positive_data_acceptance])
