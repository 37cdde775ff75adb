"""Property-based fuzzing of the gateway from its own OpenAPI schema (schemathesis): never a 5xx.

Every operation gets a bounded number of generated requests (multipart and JSON bodies, query
parameters, headers); schemathesis' default checks also hold the responses to the documented
statuses, content types and schemas.
"""

from __future__ import annotations

import traceback

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from serve.app import create_app
from serve.settings import load_settings
from tests.support.serving import FakeBackend, exported

EXAMPLES = 25
HOST = {"allowed_hosts": "testserver"}  # the Host schemathesis' ASGI client sends


def beyond_the_models_clusters(case, clusters: int = 10) -> bool:
    """A ?clusters= above the served model's clusters (the tiny digits model has 10): valid by the schema, which
    cannot know each model's number, and answered 422 naming the range."""
    value = str((case.query or {}).get("clusters", ""))
    return value.isdigit() and int(value) > clusters


def fuzz(app, examples: int = EXAMPLES, headers: dict[str, str] | None = None) -> list[str]:
    """Run every operation of `app`'s schema; returns the operations tried (failures raise)."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=headers or {})
    tried = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            beyond = beyond_the_models_clusters(case)
            response = case.call_and_validate(headers=headers,
                                              excluded_checks=[positive_data_acceptance] if beyond else None)
            assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text}"
            if beyond and response.status_code == 422:
                assert "from 1 to 10" in response.text

        check()
        tried.append(operation.label)
    return tried


def test_no_server_errors_and_responses_match_the_schema(tiny_run, tmp_path_factory):
    model = exported(tiny_run, tmp_path_factory, "cc")
    app = create_app(load_settings({}, model_repository=str(model.repository), max_wait_ms=1.0, **HOST))
    tried = fuzz(app)
    assert {"POST /cluster", "POST /embed", "GET /models", "GET /readyz", "GET /metrics", "GET /healthz"} <= set(tried)


def test_with_an_api_key_too(tiny_run, tmp_path_factory):
    model = exported(tiny_run, tmp_path_factory, "cc")
    app = create_app(load_settings({}, model_repository=str(model.repository), max_wait_ms=1.0, api_key="k3y", **HOST))
    assert "securitySchemes" in app.openapi()["components"]
    fuzz(app, examples=8, headers={"X-API-Key": "k3y"})


def test_the_fuzzer_does_catch_a_server_error():
    app = create_app(load_settings({}, max_wait_ms=1.0, **HOST), FakeBackend(error=RuntimeError("boom")))
    with pytest.raises(BaseException) as err:  # schemathesis raises a group of its failures
        fuzz(app, examples=10)
    assert "[500]" in "".join(traceback.format_exception(err.value))


def test_extra_outputs_cannot_take_the_name_of_an_answer_field():
    from contract.names import ANSWER_FIELDS
    from serve.schemas import ClusterResult

    assert set(ClusterResult.model_fields) == set(ANSWER_FIELDS)  # what contract.metadata.ExtraOutput refuses
    assert ClusterResult.model_json_schema()["additionalProperties"] is True  # the extra outputs, by name
