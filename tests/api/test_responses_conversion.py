"""The Responses API in the chat route's words, and its event stream, without an engine.

`ResponsesService.chat_request` is the one place Responses input becomes a chat request (the
live tests in tests/api/test_responses_api.py prove the rendering equals chat's); `ResponsesEncoder` is
the route's wire format.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from hypothesis import given, settings, strategies as st
from prometheus_client import CollectorRegistry

from server.api.services.responses import ResponsesService, in_responses_terms
from server.api.encoders.responses import ResponsesEncoder
from server.api.protocol.responses_request import ResponsesRequest
from server.errors import APIError, invalid_request
from server.generation import GenerationInterrupted, Outcome
from server.metrics import Metrics

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=64)


def chat_request(**fields):
    return ResponsesService(chat=None).chat_request(ResponsesRequest(model="m", **fields))


def messages(**fields) -> list[dict]:
    return [message.model_dump(exclude_none=True) for message in chat_request(**fields).messages]


def test_instructions_are_the_system_message_and_a_string_input_the_user_message():
    assert messages(instructions="Be brief.", input="Hi") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]


def test_input_and_output_text_parts_become_chat_text_parts():
    converted = messages(
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello"}]},
            {"role": "developer", "content": "late system text"},
        ]
    )
    assert converted == [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
        {"role": "developer", "content": "late system text"},
    ]


def test_an_image_part_keeps_its_type_so_the_prompt_format_refuses_it():
    converted = messages(input=[{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}])
    assert converted[0]["content"][0]["type"] == "input_image"


def test_fields_map_onto_the_chat_request():
    request = chat_request(
        input="Hi", max_output_tokens=7, temperature=0.3, top_p=0.5, stream=True, seed=3, ignore_eos=True,
        text={"format": {"type": "json_schema", "name": "city", "schema": {"type": "object"}, "strict": True}},
        documents=[{"text": "doc"}], plainformat=True,
    )
    assert (request.max_completion_tokens, request.temperature, request.top_p, request.stream) == (7, 0.3, 0.5, True)
    assert (request.seed, request.ignore_eos, request.plainformat) == (3, True, True)
    assert request.response_format.type == "json_schema"
    assert request.response_format.schema_dict == {"type": "object"}
    assert request.documents[0].text == "doc"


def test_truncation_auto_is_the_fit_history_policy_unless_history_is_given():
    assert chat_request(input="Hi").history == "error"
    assert chat_request(input="Hi", truncation="auto").history == "fit"
    assert chat_request(input="Hi", truncation="auto", history="last").history == "last"


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"store": True}, "store"),
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"background": True}, "background"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input"),
        ({"input": [{"content": "no role"}]}, "input"),
    ],
)
def test_what_needs_state_is_a_400_naming_the_field(fields, param):
    # Tools are checked by the chat route's rendering: tests/api/test_tools_api.py.
    with pytest.raises(APIError) as caught:
        chat_request(**{"input": "Hi", **fields})
    assert (caught.value.status, caught.value.param) == (400, param)


def test_function_calls_and_their_outputs_become_tool_calls_and_tool_messages():
    request = chat_request(
        input=[
            {"role": "user", "content": "Weather?"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
            {"type": "function_call", "call_id": "call_2", "name": "now", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "noon"}]},
        ],
        tools=[{"type": "function", "name": "get_weather", "description": "d", "parameters": {"type": "object"}, "strict": True}],
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False,
    )
    dumped = [message.model_dump(exclude_none=True) for message in request.messages]
    assert dumped[1:] == [
        {"role": "assistant", "content": [{"type": "text", "text": "Checking."}], "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": "{}"}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
    ]
    assert request.tools == [{"type": "function", "function": {"name": "get_weather", "description": "d", "parameters": {"type": "object"}}}]
    assert request.tool_choice == {"type": "function", "name": "get_weather"}
    assert request.parallel_tool_calls is False


def test_store_false_and_empty_tools_are_fine():
    assert chat_request(input="Hi", store=False, tools=[], tool_choice="auto").messages


def test_chat_params_are_renamed_in_errors():
    assert in_responses_terms(invalid_request("x", param="messages")).param == "input"
    assert in_responses_terms(invalid_request("x", param="messages.2.content")).param == "input"
    assert in_responses_terms(invalid_request("x", param="max_completion_tokens")).param == "max_output_tokens"
    assert in_responses_terms(invalid_request("x", param="response_format")).param == "text.format"
    assert in_responses_terms(invalid_request("x", param="temperature")).param == "temperature"


# --- the encoder ------------------------------------------------------------------------------


def encoder(**request_fields) -> ResponsesEncoder:
    outcome = Outcome(route="/test", request_id="rid", metrics=Metrics(CollectorRegistry()), deadline=0.0)
    outcome.prompt_tokens, outcome.cached_tokens = 20, 16
    echo = ResponsesService(chat=None).echo(ResponsesRequest(model="m", input="Hi", **request_fields))
    return ResponsesEncoder(response_id="resp_rid", model="m\"odel", outcome=outcome, echo=echo)


def events(frames: str) -> list[tuple[str, dict]]:
    parsed = []
    for block in frames.split("\n\n"):
        lines = block.split("\n")
        if lines[0].startswith("event: "):
            assert lines[1].startswith("data: ") and len(lines) == 2
            parsed.append((lines[0][len("event: "):], json.loads(lines[1][len("data: "):])))
    return parsed


@settings(max_examples=300, deadline=None)
@given(text=TEXT)
def test_the_fast_delta_frame_equals_the_general_event(text):
    fast, general = encoder(), encoder()
    body = {**general._text_position(), "logprobs": [], "delta": text}
    assert fast.content(0, text) == general.event("response.output_text.delta", body)


def test_a_stream_is_the_typed_events_in_order_with_consecutive_sequence_numbers():
    coder = encoder()
    coder.outcome.completion_tokens = 3
    finish = SimpleNamespace(finish_reason="stop")
    frames = coder.open() + coder.content(0, "Par") + coder.choice(0, "is", finish, None) + coder.close()
    assert frames.startswith(": keep-alive\n\n") and "[DONE]" not in frames
    parsed = events(frames)
    assert [kind for kind, _ in parsed] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed",
    ]
    assert [body["sequence_number"] for _, body in parsed] == list(range(len(parsed)))
    assert all(body["type"] == kind for kind, body in parsed)
    final = parsed[-1][1]["response"]
    assert final["status"] == "completed" and final["output"][0]["content"][0]["text"] == "Paris"
    assert final["usage"] == {
        "input_tokens": 20, "input_tokens_details": {"cached_tokens": 16, "cache_write_tokens": 0},
        "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 23,
    }


def test_a_length_finish_is_incomplete_for_max_output_tokens():
    coder = encoder()
    frames = coder.open() + coder.choice(0, "Pa", SimpleNamespace(finish_reason="length"), None) + coder.close()
    kind, body = events(frames)[-1]
    assert kind == "response.incomplete"
    assert body["response"]["status"] == "incomplete"
    assert body["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["response"]["output"][0]["status"] == "incomplete"


def test_a_failure_after_the_start_is_the_error_event():
    coder = encoder()
    opening = events(coder.open())
    kind, body = events(coder.error(GenerationInterrupted("timeout", "The request timed out and was stopped.")))[0]
    assert kind == "error"
    assert body == {
        "type": "error", "code": "timeout", "message": "The request timed out and was stopped.", "param": None,
        "sequence_number": len(opening),
    }


def test_every_event_and_the_body_match_openai_schemas(openai_openapi_file):
    from tests.support.openai_schema import RESPONSE_EVENT_SCHEMAS as EVENT_SCHEMAS, OpenAISchemas

    schemas = OpenAISchemas(openai_openapi_file)
    json_schema = {"type": "json_schema", "name": "city", "schema": {"type": "object"}, "strict": True}
    settings = [{}, {"text": {"format": json_schema}, "instructions": "Be brief.", "max_output_tokens": 9,
                     "metadata": {"k": "v"}, "user": "u", "truncation": "auto", "temperature": 0.5}]
    for finish_reason, request_fields in (("stop", settings[0]), ("length", settings[1])):
        coder = encoder(**request_fields)
        frames = coder.open() + coder.content(0, "Par") + coder.choice(0, "is", SimpleNamespace(finish_reason=finish_reason), None)
        for kind, body in events(frames + coder.close()):
            schemas.assert_valid(EVENT_SCHEMAS[kind], body)
        body_coder = encoder(**request_fields)
        schemas.assert_valid("Response", body_coder.body([SimpleNamespace(text="Paris", completion=SimpleNamespace(finish_reason=finish_reason))]))
    kind, body = events(encoder().error(GenerationInterrupted("drain", "The server is shutting down.")))[0]
    schemas.assert_valid("ResponseErrorEvent", body)


# --- stored responses: the chain as history, input items, pages ------------------------------

from server.api.services.stored_responses import (  # noqa: E402 - grouped with the tests that use them
    StoredResponses, chain_items, input_items_page, stored_input_items,
)
from server.store import Chain, StoredResponse  # noqa: E402


def stored_turn(response_id: str, question: str, answer: str, previous: str | None = None) -> StoredResponse:
    request = ResponsesRequest(model="m", input=question)
    return StoredResponse(
        id=response_id, previous_id=previous, created_at=0.0, status="completed",
        response={"id": response_id, "output": [
            {"id": "msg_x", "type": "message", "role": "assistant", "status": "completed",
             "content": [{"type": "output_text", "text": answer, "annotations": [], "logprobs": []}]},
        ]},
        input_items=stored_input_items(request),
    )


def test_a_chain_is_each_turns_input_then_its_answer_before_the_new_input():
    chain = Chain([stored_turn("resp_1", "Hi", "Hello!"), stored_turn("resp_2", "And you?", "Fine.", "resp_1")])
    service = ResponsesService(chat=None, stored=StoredResponses(archive=object()))
    request = service.chat_request(
        ResponsesRequest(model="m", instructions="Be brief.", input="Bye", previous_response_id="resp_2"),
        chain_items(chain),
    )
    assert [m.model_dump(exclude_none=True) for m in request.messages] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}]},
        {"role": "user", "content": [{"type": "text", "text": "And you?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Fine."}]},
        {"role": "user", "content": "Bye"},
    ]


def test_stored_input_items_have_ids_and_typed_parts():
    items = stored_input_items(ResponsesRequest(model="m", input=[
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
    ]))
    assert [(i["type"], i["role"], i["content"][0]["type"], i["status"]) for i in items] == [
        ("message", "user", "input_text", "completed"), ("message", "assistant", "output_text", "completed"),
    ]
    assert len({item["id"] for item in items}) == 2 and all(i["id"].startswith("msg_") for i in items)


def test_previous_response_id_with_a_conversation_is_a_400_even_with_a_store():
    service = ResponsesService(chat=None, stored=StoredResponses(archive=object()))
    with pytest.raises(APIError) as caught:
        service.check(ResponsesRequest(model="m", input="Hi", previous_response_id="resp_1", conversation="conv_1"))
    assert (caught.value.status, caught.value.param) == (400, "conversation")


def test_store_defaults_to_true_with_a_store_and_false_without():
    request = ResponsesRequest(model="m", input="Hi")
    assert StoredResponses(archive=object()).will_store(request) is True
    assert StoredResponses(archive=None).will_store(request) is False
    assert StoredResponses(archive=object()).will_store(ResponsesRequest(model="m", input="Hi", store=False)) is False


def test_input_item_pages_walk_the_items_in_either_order():
    items = [{"id": f"msg_{n}"} for n in range(5)]
    first = input_items_page(items, after=None, limit=2, order="asc")
    assert [i["id"] for i in first["data"]] == ["msg_0", "msg_1"] and first["has_more"]
    assert (first["first_id"], first["last_id"]) == ("msg_0", "msg_1")
    seen, after = [], None
    for _ in range(10):  # bounded: 3 pages
        page = input_items_page(items, after=after, limit=2, order="desc")
        seen += [i["id"] for i in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert seen == [f"msg_{n}" for n in reversed(range(5))]


def test_an_unknown_after_is_a_400():
    with pytest.raises(APIError) as caught:
        input_items_page([{"id": "msg_0"}], after="msg_nope", limit=20, order="desc")
    assert (caught.value.status, caught.value.param) == (400, "after")


def test_a_chain_carries_function_calls_and_their_outputs():
    call = {"id": "fc_1", "type": "function_call", "status": "completed", "call_id": "call_1",
            "name": "get_weather", "arguments": '{"city": "Paris"}'}
    turn = StoredResponse(
        id="resp_1", previous_id=None, created_at=0.0, status="completed",
        response={"id": "resp_1", "output": [call]},
        input_items=stored_input_items(ResponsesRequest(model="m", input="Weather in Paris?")),
    )
    follow_up = ResponsesRequest(
        model="m", previous_response_id="resp_1",
        input=[{"type": "function_call_output", "call_id": "call_1", "output": "Sunny"}],
    )
    stored_follow_up = stored_input_items(follow_up)
    assert stored_follow_up[0]["type"] == "function_call_output" and stored_follow_up[0]["id"].startswith("fco_")
    service = ResponsesService(chat=None, stored=StoredResponses(archive=object()))
    messages = [m.model_dump(exclude_none=True) for m in service.chat_request(follow_up, chain_items(Chain([turn]))).messages]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert (messages[2]["tool_call_id"], messages[2]["content"]) == ("call_1", "Sunny")
