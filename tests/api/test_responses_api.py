"""`POST /v1/responses` through the `openai` SDK and the OpenAI Agents SDK, on the shared server.

Real server, real engine (the embedded default model). Every response and stream event is
validated against OpenAI's published schemas. Greedy answers are compared with the chat route's:
the Responses API renders through chat's own path, so the same conversation must give the same
prompt tokens and the same text.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from tests.support.openai_schema import RESPONSE_EVENT_SCHEMAS as EVENT_SCHEMAS

pytestmark = pytest.mark.engine

# Greedy, the small model answers this in one sentence that names Paris and stops on its own
# well within the token limit (asked bare, it lists "1. The capital of France is Paris. 2. …").
QUESTION = "What is the capital of France?"
BRIEF = "Answer in one short sentence."
GREEDY = {"temperature": 0, "max_output_tokens": 32}


@pytest.fixture
def respond(client, default_model_name, schemas):
    """Non-streaming `responses.create` that checks the body against OpenAI's `Response` schema."""

    def create(**fields):
        response = client.responses.create(model=default_model_name, **fields)
        schemas.assert_valid("Response", response.model_dump(exclude_unset=True, by_alias=True))
        return response

    return create


def chat_answer(client, model: str, messages: list[dict], **fields):
    return client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=32, **fields)


def test_plain_input_gives_a_completed_message(respond):
    response = respond(input="What is 2 plus 2?", **GREEDY)
    assert response.object == "response" and response.status == "completed"
    assert response.id.startswith("resp_")
    (message,) = response.output
    assert (message.type, message.role, message.status) == ("message", "assistant", "completed")
    assert message.content[0].type == "output_text"
    assert "4" in response.output_text
    usage = response.usage
    assert usage.input_tokens > 0 and 0 < usage.output_tokens < 32
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    # What the prefix cache holds of this prompt depends on what the shared server answered
    # before (tests/api/test_usage.py checks the counts): a part of the input, which may be none of it.
    assert isinstance(usage.input_tokens_details.cached_tokens, int)
    assert 0 <= usage.input_tokens_details.cached_tokens <= usage.input_tokens
    assert response.store is True  # OpenAI's default; the shared server has the default SQLite store


def test_instructions_render_as_the_chat_system_message(respond, client, default_model_name):
    instructions = BRIEF
    response = respond(instructions=instructions, input=QUESTION, **GREEDY)
    assert "Paris" in response.output_text
    assert response.instructions == instructions
    chat = chat_answer(
        client, default_model_name, [{"role": "system", "content": instructions}, {"role": "user", "content": QUESTION}]
    )
    assert response.output_text == chat.choices[0].message.content
    assert response.usage.input_tokens == chat.usage.prompt_tokens


def test_a_message_list_renders_as_the_same_chat(respond, client, default_model_name):
    conversation = [
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi! How can I help you today?"},
        {"role": "user", "content": QUESTION},
    ]
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "Hello!"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hi! How can I help you today?"}]},
        {"role": "user", "content": QUESTION},
    ]
    response = respond(input=items, **GREEDY)
    chat = chat_answer(client, default_model_name, conversation)
    assert response.output_text == chat.choices[0].message.content
    assert response.usage.input_tokens == chat.usage.prompt_tokens


def test_prompt_extensions_render_as_on_chat(default_server, default_model_name):
    documents = [{"text": "Blueberries are now green.", "metadata": {"date": "2021-01-01"}}]
    question = "What color are blueberries now?"
    rendered = httpx.post(
        default_server.base_url + "/v1/chat/render",
        json={"model": default_model_name, "messages": [{"role": "user", "content": question}],
              "documents": documents, "plainformat": True},
        timeout=30,
    ).json()
    response = httpx.post(
        default_server.base_url + "/v1/responses",
        json={"model": default_model_name, "input": question, "documents": documents, "plainformat": True,
              "max_output_tokens": 1},
        timeout=60,
    ).json()
    assert response["usage"]["input_tokens"] == rendered["num_tokens"]


def test_text_format_json_schema_constrains_the_output(respond):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    }
    response = respond(
        input=QUESTION + " Answer in JSON.", temperature=0, max_output_tokens=40,
        text={"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}},
    )
    assert response.text.format.type == "json_schema"
    answer = json.loads(response.output_text)
    assert set(answer) == {"city"} and isinstance(answer["city"], str)


def test_max_output_tokens_makes_an_incomplete_response(respond):
    response = respond(input=QUESTION, temperature=0, max_output_tokens=2)
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 2


def test_a_stream_sends_the_typed_events_in_order(client, default_model_name, schemas, respond):
    events = list(
        client.responses.create(model=default_model_name, instructions=BRIEF, input=QUESTION, stream=True, **GREEDY)
    )
    kinds = [event.type for event in events]
    deltas = kinds.count("response.output_text.delta")
    assert deltas >= 1
    assert kinds == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    for event in events:
        schemas.assert_valid(EVENT_SCHEMAS[event.type], event.model_dump(exclude_unset=True, by_alias=True))
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    final = events[-1].response
    assert final.status == "completed" and final.output_text == text
    assert events[-4].text == text
    # The same answer as without streaming, and the same token counts.
    plain = respond(instructions=BRIEF, input=QUESTION, **GREEDY)
    assert plain.output_text == text
    assert (final.usage.input_tokens, final.usage.output_tokens) == (plain.usage.input_tokens, plain.usage.output_tokens)


def test_the_sdk_stream_helper_gets_the_final_response(client, default_model_name, schemas):
    with client.responses.stream(model=default_model_name, instructions=BRIEF, input=QUESTION, **GREEDY) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.output_text == "".join(deltas) and "Paris" in final.output_text
    schemas.assert_valid("Response", final.model_dump(exclude_unset=True, by_alias=True))


def test_the_wire_starts_with_a_keep_alive_and_has_no_done(default_server, default_model_name):
    # Greedy: a sampled answer can end with the end-of-text token within 4 tokens ("completed").
    body = {"model": default_model_name, "input": QUESTION, "stream": True, "temperature": 0, "max_output_tokens": 4}
    with httpx.stream("POST", default_server.base_url + "/v1/responses", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = b"".join(response.iter_raw()).decode()
    assert raw.startswith(": keep-alive\n\n")
    assert "[DONE]" not in raw
    blocks = [block for block in raw.split("\n\n") if block and not block.startswith(":")]
    for block in blocks:
        event_line, data_line = block.split("\n")
        assert json.loads(data_line.removeprefix("data: "))["type"] == event_line.removeprefix("event: ")
    assert blocks[-1].startswith("event: response.incomplete\n")  # 4 tokens cut the answer short


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools"),
        ({"previous_response_id": "resp_123", "conversation": "conv_1"}, "conversation"),
    ],
    ids=["built-in-tools", "previous_response_id with conversation"],
)
def test_what_needs_built_in_tools_or_a_conversation_is_a_bad_request(client, default_model_name, fields, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=default_model_name, input=QUESTION, **fields)
    assert caught.value.body["param"] == param


def test_an_unknown_response_is_a_404_response_not_found(client, default_model_name):
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.retrieve("resp_123")
    assert caught.value.body["code"] == "response_not_found"
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model=default_model_name, input=QUESTION, previous_response_id="resp_123")
    assert caught.value.body["code"] == "response_not_found"


def test_an_unknown_model_and_a_bad_part_are_clear_errors(client, default_model_name):
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input=QUESTION)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(
            model=default_model_name,
            input=[{"role": "user", "content": [{"type": "input_image", "image_url": "https://example.com/a.png"}]}],
        )
    assert caught.value.body["param"] == "input" and "text parts only" in caught.value.message


def test_an_agent_runs_to_a_final_output(default_server, default_model_name):
    import agents  # openai-agents, a test dependency
    from agents.models.openai_responses import OpenAIResponsesModel

    agents.set_tracing_disabled(True)  # traces would go to OpenAI's servers
    model = OpenAIResponsesModel(
        model=default_model_name,
        openai_client=openai.AsyncOpenAI(base_url=default_server.openai_base_url, api_key="unused", max_retries=0),
    )
    agent = agents.Agent(
        name="Geographer", instructions=BRIEF, model=model,
        model_settings=agents.ModelSettings(temperature=0, max_tokens=32),
    )
    result = asyncio.run(agents.Runner.run(agent, QUESTION))
    assert isinstance(result.final_output, str) and "Paris" in result.final_output
