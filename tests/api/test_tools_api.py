"""Tool calls on `/v1/chat/completions` and `/v1/responses`, through the openai SDK, on the shared
server (real engine, the embedded model).

The small model answers at random; what it cannot do is break a call: every call names an
allowed tool and its arguments validate against that tool's schema, streamed or not. Replies,
chunks and events validate against OpenAI's published schemas.
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from tests.support.openai_schema import RESPONSE_EVENT_SCHEMAS as EVENT_SCHEMAS

pytestmark = pytest.mark.engine

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
CLOCK_PARAMETERS = {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"],
                    "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The weather of a city.",
                                      "parameters": WEATHER_PARAMETERS}},
    {"type": "function", "function": {"name": "get_time", "description": "The time now.", "parameters": CLOCK_PARAMETERS}},
]
PARAMETERS = {"get_weather": WEATHER_PARAMETERS, "get_time": CLOCK_PARAMETERS}
QUESTION = [{"role": "user", "content": "What is the weather in Paris, in celsius?"}]
# One call is about 25 tokens; the small model, left free, fills a parallel list to its maximum
# (8 calls), so the tests ask for one call unless they test parallel calls.
LIMITS = {"max_tokens": 120, "seed": 7, "parallel_tool_calls": False}


@pytest.fixture
def chat(client, default_model_name, schemas):
    """Non-streaming chat with tools, checked against OpenAI's response schema."""

    def create(**fields):
        body = {"messages": QUESTION, "tools": TOOLS, **LIMITS, **fields}
        completion = client.chat.completions.create(model=default_model_name, **body)
        schemas.assert_valid("CreateChatCompletionResponse", completion.model_dump(exclude_unset=True))
        return completion

    return create


def assert_valid_calls(calls, allowed=PARAMETERS):
    assert calls, "no tool call"
    for call in calls:
        assert call.id.startswith("call_") and call.type == "function"
        assert call.function.name in allowed
        jsonschema.validate(json.loads(call.function.arguments), allowed[call.function.name])


def test_required_gives_valid_calls_with_no_content(chat):
    # Room for the longest list the schema allows (8 calls of up to ~60 tokens).
    completion = chat(tool_choice="required", parallel_tool_calls=True, max_tokens=600)
    (choice,) = completion.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert_valid_calls(choice.message.tool_calls)
    assert len({call.id for call in choice.message.tool_calls}) == len(choice.message.tool_calls)


def test_a_named_function_gives_one_call_of_it(chat):
    completion = chat(tool_choice={"type": "function", "function": {"name": "get_time"}})
    (choice,) = completion.choices
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert_valid_calls([call], {"get_time": CLOCK_PARAMETERS})


def test_parallel_tool_calls_false_gives_exactly_one_call(chat):
    for seed in (1, 2, 3):
        completion = chat(tool_choice="required", parallel_tool_calls=False, seed=seed)
        assert len(completion.choices[0].message.tool_calls) == 1
        assert_valid_calls(completion.choices[0].message.tool_calls)


def test_auto_answers_in_text_or_with_valid_calls(chat):
    # Which of the two the model picks is its own affair; either must be well formed.
    for seed in range(4):
        choice = chat(tool_choice="auto", seed=seed).choices[0]
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls" and choice.message.content is None
            assert_valid_calls(choice.message.tool_calls)
        else:
            assert choice.finish_reason in ("stop", "length")
            assert isinstance(choice.message.content, str)
            assert not choice.message.content.lstrip().startswith('{"answer"')


def test_none_answers_in_text_and_shows_no_tools(chat, default_server, default_model_name):
    choice = chat(tool_choice="none").choices[0]
    assert choice.message.tool_calls is None and choice.finish_reason in ("stop", "length")
    assert isinstance(choice.message.content, str)
    rendered = httpx.post(
        default_server.base_url + "/v1/chat/render",
        json={"model": default_model_name, "messages": QUESTION, "tools": TOOLS, "tool_choice": "none"}, timeout=60,
    ).json()
    assert "Available functions" not in rendered["prompt"]
    shown = httpx.post(
        default_server.base_url + "/v1/chat/render",
        json={"model": default_model_name, "messages": QUESTION, "tools": TOOLS}, timeout=60,
    ).json()
    assert "Available functions:\nget_weather:\n  description: The weather of a city." in shown["prompt"]


def test_a_turn_carrying_a_tool_result_is_rendered_and_answered(chat, default_server, default_model_name):
    first = chat(tool_choice="required", parallel_tool_calls=False).choices[0].message
    call = first.tool_calls[0]
    messages = [
        *QUESTION,
        first.model_dump(exclude_none=True, exclude={"refusal"}),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'},
    ]
    answer = chat(messages=messages, tool_choice="auto").choices[0]
    assert answer.message.content is not None or answer.message.tool_calls
    rendered = httpx.post(
        default_server.base_url + "/v1/chat/render",
        json={"model": default_model_name, "messages": messages, "tools": TOOLS}, timeout=60,
    ).json()["prompt"]
    expected_call = json.dumps([{"name": call.function.name, "arguments": json.loads(call.function.arguments)}])
    expected_result = f'Function {call.function.name} returned: {{"temperature": 21}}'
    assert "Available functions:" in rendered
    assert expected_call in rendered and expected_result in rendered
    assert rendered.index(QUESTION[0]["content"]) < rendered.index(expected_call) < rendered.index(expected_result)


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}], ids=["required", "named"])
def test_a_stream_has_openais_shape_and_the_same_calls_as_without(client, default_model_name, schemas, chat, tool_choice):
    body = {"messages": QUESTION, "tools": TOOLS, "tool_choice": tool_choice, **LIMITS}
    stream = client.chat.completions.create(
        model=default_model_name, stream=True, stream_options={"include_usage": True}, **body
    )
    heads: dict[int, tuple[str, str]] = {}
    arguments: dict[int, str] = {}
    finish = []
    for chunk in stream:
        schemas.assert_valid("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
        for choice in chunk.choices:
            assert not choice.delta.content, "JSON leaked into content"
            if choice.finish_reason:
                finish.append(choice.finish_reason)
            for call in choice.delta.tool_calls or ():
                if call.id is not None:
                    assert call.index not in heads and call.type == "function" and call.function.arguments == ""
                    heads[call.index] = (call.id, call.function.name)
                    arguments[call.index] = ""
                else:
                    assert call.index in heads and call.function.name is None
                    arguments[call.index] += call.function.arguments
    assert finish == ["tool_calls"]
    assert list(heads) == list(range(len(heads)))
    plain = chat(tool_choice=tool_choice).choices[0].message.tool_calls
    assert [(name, arguments[i]) for i, (_, name) in heads.items()] == [
        (call.function.name, call.function.arguments) for call in plain
    ]
    assert_valid_calls(plain)


def test_tool_calls_are_counted_by_tool_choice(chat, default_server):
    def counted() -> float:
        metrics = httpx.get(default_server.base_url + "/metrics", timeout=60).text
        lines = [line for line in metrics.splitlines() if line.startswith('airoboros_tool_calls_total{tool_choice="required"}')]
        return float(lines[0].split()[-1]) if lines else 0.0

    before = counted()
    calls = chat(tool_choice="required").choices[0].message.tool_calls
    assert counted() == before + len(calls)


BAD_TOOLS = {
    "unknown-function": ({"tool_choice": {"type": "function", "function": {"name": "fly"}}}, "tool_choice", "unknown_tool"),
    "schema-that-does-not-compile": (
        {"tools": [TOOLS[0], {"type": "function", "function": {"name": "broken", "parameters": {
            "type": "object", "properties": {"x": {"type": "string", "pattern": "(("}}}}}]},
        "tools", "invalid_tool_schema",
    ),
    "tool-message-without-call": (
        {"messages": [*QUESTION, {"role": "tool", "tool_call_id": "call_1", "content": "21"}]}, "messages",
        "unexpected_tool_message",
    ),
    "non-function-tool": ({"tools": [{"type": "code_interpreter"}]}, "tools", "unsupported_tool_type"),
}


@pytest.mark.parametrize("fields,param,code", BAD_TOOLS.values(), ids=BAD_TOOLS.keys())
def test_bad_tool_input_is_a_400_and_the_next_request_works(chat, client, default_model_name, fields, param, code):
    body = {"messages": QUESTION, "tools": TOOLS, "tool_choice": "required", "max_tokens": 8, **fields}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=default_model_name, **body)
    assert (caught.value.code, caught.value.body["param"]) == (code, param)
    if code == "invalid_tool_schema":
        assert "'broken'" in caught.value.message
    if code == "unsupported_tool_type":
        assert "'code_interpreter'" in caught.value.message
    assert_valid_calls(chat(tool_choice="required").choices[0].message.tool_calls)


# --- the Responses API ------------------------------------------------------------------------------

RESPONSES_TOOLS = [
    {"type": "function", "name": "get_weather", "description": "The weather of a city.", "parameters": WEATHER_PARAMETERS,
     "strict": True},
    {"type": "function", "name": "get_time", "parameters": CLOCK_PARAMETERS, "strict": True},
]
RESPONSES_LIMITS = {"max_output_tokens": 120, "seed": 7, "parallel_tool_calls": False}


def test_responses_function_calls_are_output_items(client, default_model_name, schemas):
    response = client.responses.create(
        model=default_model_name, input=QUESTION[0]["content"], tools=RESPONSES_TOOLS, tool_choice="required",
        extra_body=RESPONSES_LIMITS,
    )
    schemas.assert_valid("Response", response.model_dump(exclude_unset=True, by_alias=True))
    assert response.status == "completed" and response.output
    for item in response.output:
        assert item.type == "function_call" and item.call_id.startswith("call_") and item.status == "completed"
        jsonschema.validate(json.loads(item.arguments), PARAMETERS[item.name])
    assert [tool.name for tool in response.tools] == ["get_weather", "get_time"]


def test_responses_stream_function_call_events(client, default_model_name, schemas):
    events = list(client.responses.create(
        model=default_model_name, input=QUESTION[0]["content"], tools=RESPONSES_TOOLS,
        tool_choice={"type": "function", "name": "get_time"}, stream=True, extra_body=RESPONSES_LIMITS,
    ))
    for event in events:
        schemas.assert_valid(EVENT_SCHEMAS[event.type], event.model_dump(exclude_unset=True, by_alias=True))
    types = [event.type for event in events]
    assert types[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert types[-3:] == ["response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    assert set(types[3:-3]) <= {"response.function_call_arguments.delta"}
    added, done, final = events[2].item, events[-2].item, events[-1].response
    assert (added.type, added.name, added.arguments, added.status) == ("function_call", "get_time", "", "in_progress")
    joined = "".join(event.delta for event in events if event.type == "response.function_call_arguments.delta")
    assert events[-3].arguments == joined == done.arguments == final.output[0].arguments
    assert done.call_id == added.call_id == final.output[0].call_id
    jsonschema.validate(json.loads(joined), CLOCK_PARAMETERS)


def test_responses_input_carries_a_call_and_its_output(client, default_model_name, schemas):
    response = client.responses.create(
        model=default_model_name, tools=RESPONSES_TOOLS, tool_choice="auto", extra_body=RESPONSES_LIMITS,
        input=[
            {"role": "user", "content": QUESTION[0]["content"]},
            {"type": "function_call", "call_id": "call_abc", "name": "get_weather",
             "arguments": '{"city": "Paris", "unit": "celsius"}'},
            {"type": "function_call_output", "call_id": "call_abc", "output": '{"temperature": 21}'},
        ],
    )
    schemas.assert_valid("Response", response.model_dump(exclude_unset=True, by_alias=True))
    assert response.output
    for item in response.output:
        if item.type == "function_call":
            jsonschema.validate(json.loads(item.arguments), PARAMETERS[item.name])
        else:
            assert item.type == "message" and isinstance(item.content[0].text, str)


def test_responses_built_in_tools_are_a_400_naming_the_type(client, default_model_name):
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=default_model_name, input="hi", tools=[{"type": "web_search_preview"}])
    assert caught.value.body["param"] == "tools" and "'web_search_preview'" in caught.value.message
