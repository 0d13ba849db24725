"""Property: whatever the tool's JSON Schema, a `required` call on the real engine has arguments
that validate against it, streamed and not, and the stream joins to the same arguments as the
non-streamed call with the same seed (harness/json_schemas.py draws the schemas)."""

from __future__ import annotations

import json

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.json_schemas import parameters

pytestmark = pytest.mark.engine

QUESTION = [{"role": "user", "content": "Call the function with sensible values."}]


def streamed_call(client, model: str, body: dict) -> tuple[str, str, str | None]:
    name, arguments, finish = None, "", None
    for chunk in client.chat.completions.create(model=model, stream=True, **body):
        for choice in chunk.choices:
            assert not choice.delta.content
            finish = choice.finish_reason or finish
            for call in choice.delta.tool_calls or ():
                assert call.index == 0
                name = call.function.name or name
                arguments += call.function.arguments or ""
    return name, arguments, finish


@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schema=parameters, seed=st.integers(0, 2**16))
def test_every_call_validates_against_its_schema_streamed_or_not(client, default_model_name, schema, seed):
    tools = [{"type": "function", "function": {"name": "act", "parameters": schema}}]
    body = {"messages": QUESTION, "tools": tools, "tool_choice": "required", "parallel_tool_calls": False,
            "max_tokens": 256, "seed": seed}
    choice = client.chat.completions.create(model=default_model_name, **body).choices[0]
    assert choice.finish_reason == "tool_calls", choice
    (call,) = choice.message.tool_calls
    jsonschema.validate(json.loads(call.function.arguments), schema)
    assert streamed_call(client, default_model_name, body) == ("act", call.function.arguments, "tool_calls")
