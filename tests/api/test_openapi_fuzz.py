"""schemathesis over the server's own /openapi.json: no 5xx and no response that breaks the schema.

It runs against the shared default server (the real engine). Bodies that name a model are
pointed at the served one, so generation paths run too instead of stopping at a 404, and every
generation is bounded to GENERATED_TOKENS tokens (a larger or missing `max_tokens`, on
/v1/responses `max_output_tokens`, becomes that), so every request schemathesis invents, valid or
not, is cheap to answer on two CPU cores; the default `max_tokens` path is checked in
tests/api/test_served_prompts.py.

schemathesis's pytest plugin does not run on pytest 9, so each operation's hypothesis strategy
is driven directly with `@given`, with the same checks `call_and_validate` would run.
"""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.app import build_app

pytestmark = pytest.mark.engine

EXAMPLES_PER_OPERATION = 12
GENERATED_TOKENS = 8
# Each generating route, and the body fields that bound its output (the first is set when none is).
GENERATING = {
    "/v1/chat/completions": ("max_tokens", "max_completion_tokens"),
    "/v1/completions": ("max_tokens",),
    "/v1/responses": ("max_output_tokens",),
}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

# The operations, read from the app's router at collection time (no engine needed).
_ROUTES = [route for route in build_app().routes if isinstance(route, APIRoute)]
OPERATIONS = sorted((method, route.path_format) for route in _ROUTES for method in route.methods)
# Those that take a body (POST /v1/responses/{id}/cancel takes none).
WITH_BODY = {(method, route.path_format) for route in _ROUTES for method in route.methods if route.body_field is not None}


@pytest.fixture(scope="module")
def api_schema(default_server):
    return schemathesis.openapi.from_url(default_server.base_url + "/openapi.json")


def point_at_served_model(case, model: str) -> None:
    if isinstance(case.body, dict) and "model" in case.body:
        case.body["model"] = model
    if case.path_parameters and "model_id" in case.path_parameters:
        case.path_parameters["model_id"] = model


def bound_generation(case) -> None:
    """At most GENERATED_TOKENS tokens per choice: a larger or missing max_tokens becomes that."""
    if case.path not in GENERATING or not isinstance(case.body, dict):
        return
    keys = GENERATING[case.path]
    if all(case.body.get(key) is None for key in keys):
        case.body[keys[0]] = GENERATED_TOKENS
    for key in keys:
        value = case.body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > GENERATED_TOKENS:
            case.body[key] = GENERATED_TOKENS


# Invalid inputs exist only for operations that take a body (a string path parameter has none).
CASES = [
    (method, path, mode)
    for method, path in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or (method, path) in WITH_BODY
]


@pytest.mark.parametrize(
    "method,path,mode", CASES, ids=[f"{m} {p} {'valid' if g is GenerationMode.POSITIVE else 'invalid'}" for m, p, g in CASES]
)
def test_operation_answers_within_its_schema(api_schema, default_server, method, path, mode):
    operation = api_schema[path][method]

    @settings(
        max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def answers_within_schema(case) -> None:
        point_at_served_model(case, default_server.model)
        bound_generation(case)
        case.call_and_validate(base_url=default_server.base_url, timeout=60, checks=CHECKS)

    answers_within_schema()
