"""Errors exactly as the contract's table (400, 404, 405, 500, errors after a stream began).

Each case asserts the status, the OpenAI error `type`/`code`/`param`, that the `openai` SDK
raises the matching exception class, that the body validates against OpenAI's ErrorResponse
schema, and that no message leaks internals.
"""

from __future__ import annotations

import json
import re

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from tests.support.app import build_app
from harness.fake_engine import FakeAsyncLLM
from tests.support.inprocess import FAKE_MODEL, serving_fake
from tests.support.openai_schema import OpenAISchemas

pytestmark = pytest.mark.engine

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
LEAK = re.compile(r"Traceback|File \"|/work/|/root/|/home/|site-packages|0x[0-9a-f]{6,}")


def assert_error_body(body: dict, schemas: OpenAISchemas, *, type: str, code: str | None = None, param=...) -> None:
    schemas.assert_valid("ErrorResponse", body)
    # OpenAI's shape exactly: {"error": {"message", "type", "param", "code"}}, nothing else.
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    error = body["error"]
    assert error["type"] == type
    if code is not None:
        assert error["code"] == code
    if param is not ...:
        assert error["param"] == param
    assert error["message"] and not LEAK.search(error["message"]), error["message"]


# (fields added to a valid chat request, expected param, expected code or None)
CHAT_400_CASES = {
    "temperature-above-2": ({"temperature": 2.5}, "temperature", None),
    "temperature-wrong-type": ({"temperature": "hot"}, "temperature", None),
    "top_p-zero": ({"top_p": 0}, "top_p", None),
    "top_p-above-1": ({"top_p": 1.5}, "top_p", None),
    "n-zero": ({"n": 0}, "n", None),
    "n-above-server-maximum": ({"n": 9}, "n", None),
    "presence_penalty-above-2": ({"presence_penalty": 3}, "presence_penalty", None),
    "frequency_penalty-below-minus-2": ({"frequency_penalty": -2.5}, "frequency_penalty", None),
    "top_logprobs-above-20": ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", None),
    "top_logprobs-without-logprobs": ({"top_logprobs": 2}, None, None),
    "five-stop-strings": ({"stop": ["a", "b", "c", "d", "e"]}, "stop", None),
    "logit_bias-key-not-an-id": ({"logit_bias": {"abc": 1}}, "logit_bias", None),
    "logit_bias-value-above-100": ({"logit_bias": {"5": 101}}, "logit_bias", None),
    "logit_bias-id-outside-vocabulary": ({"logit_bias": {"99999999": 1}}, "logit_bias", None),
    "max_tokens-zero": ({"max_tokens": 0}, "max_tokens", None),
    "max_tokens-beyond-context": ({"max_tokens": 100_000}, "messages", "context_length_exceeded"),
    "stream_options-without-stream": ({"stream_options": {"include_usage": True}}, None, None),
    "response_format-unknown-type": ({"response_format": {"type": "xml"}}, "response_format.type", None),
    "json_schema-without-schema": ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format", None),
    "tool_choice-unknown-function": ({"tools": [{"type": "function", "function": {"name": "f"}}],
                                      "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice", "unknown_tool"),
    "tool-schema-that-does-not-compile": ({"tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "strin"}}}}}]}, "tools", "invalid_tool_schema"),
    "tool-type-not-function": ({"tools": [{"type": "web_search"}]}, "tools", "unsupported_tool_type"),
    "history-unknown-policy": ({"history": "sometimes"}, "history", None),
    "empty-messages": ({"messages": []}, "messages", None),
    "messages-not-a-list": ({"messages": "hello"}, "messages", None),
    "tool-message-without-a-call": ({"messages": [*QUESTION, {"role": "tool", "tool_call_id": "call_1", "content": "42"}]},
                                    "messages", "unexpected_tool_message"),
    "unknown-role": ({"messages": [*QUESTION, {"role": "function", "content": "42"}]}, "messages", "unsupported_role"),
    "image-part": ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages", "unsupported_content_type"),
    "system-after-user": ({"messages": [*QUESTION, {"role": "system", "content": "late"}]}, "messages", "misplaced_system_message"),
    "missing-model": ({"model": None}, "model", None),
    # vLLM's own check (its VLLMValidationError is no ValueError): found by the schemathesis run.
    "min_tokens-above-max_tokens": ({"max_tokens": 4, "min_tokens": 10}, ..., None),
}


@pytest.mark.parametrize("fields,param,code", CHAT_400_CASES.values(), ids=CHAT_400_CASES.keys())
def test_chat_bad_request(default_server, default_model_name, schemas, client, fields, param, code):
    body = {"model": default_model_name, "messages": QUESTION, "max_tokens": 4, **fields}
    body = {key: value for key, value in body.items() if value is not None}
    response = httpx.post(default_server.base_url + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert_error_body(response.json(), schemas, type="invalid_request_error", code=code, param=param)
    if "model" in body and isinstance(body.get("messages"), list):
        extra = {k: v for k, v in body.items() if k not in ("model", "messages")}
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=body["model"], messages=body["messages"], extra_body=extra)
        assert caught.value.status_code == 400 and caught.value.code == code


COMPLETION_400_CASES = {
    "empty-prompt-list": ({"prompt": []}, "prompt"),
    "empty-prompt": ({"prompt": ""}, "prompt"),
    "prompt-beyond-context": ({"prompt": "word " * 9000}, "prompt"),
    "logprobs-above-20": ({"logprobs": 21}, "logprobs"),
    "suffix": ({"suffix": "end"}, "suffix"),
}


@pytest.mark.parametrize("fields,param", COMPLETION_400_CASES.values(), ids=COMPLETION_400_CASES.keys())
def test_completions_bad_request(default_server, default_model_name, schemas, fields, param):
    body = {"model": default_model_name, "prompt": "Hello", "max_tokens": 4, **fields}
    response = httpx.post(default_server.base_url + "/v1/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert_error_body(response.json(), schemas, type="invalid_request_error", param=param)


@pytest.mark.parametrize(
    "content,headers",
    [
        (b"{not json", {"content-type": "application/json"}),
        (b"", {"content-type": "application/json"}),
        (b"[1, 2]", {"content-type": "application/json"}),
        (b'{"model": "m", "messages": []}', {"content-type": "text/plain"}),
    ],
    ids=["invalid-json", "empty-body", "json-list", "wrong-content-type"],
)
def test_malformed_bodies_are_400(default_server, schemas, content, headers):
    response = httpx.post(default_server.base_url + "/v1/chat/completions", content=content, headers=headers)
    assert response.status_code == 400, response.text
    assert_error_body(response.json(), schemas, type="invalid_request_error")


def test_next_request_works_after_bad_ones(client, default_model_name):
    for _ in range(3):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=default_model_name, messages=QUESTION, temperature=9)
    completion = client.chat.completions.create(model=default_model_name, messages=QUESTION, max_tokens=3)
    assert completion.choices[0].message.content


# --- 404 and 405 ---------------------------------------------------------------------------


def test_unknown_model_is_404_model_not_found(client, default_server, schemas):
    for call in (
        lambda: client.chat.completions.create(model="gpt-4o", messages=QUESTION),
        lambda: client.completions.create(model="gpt-4o", prompt="Hi"),
        lambda: client.models.retrieve("gpt-4o"),
    ):
        with pytest.raises(openai.NotFoundError) as caught:
            call()
        assert caught.value.code == "model_not_found"
        assert_error_body(caught.value.response.json(), schemas, type="not_found_error", param="model")
    render = httpx.post(default_server.base_url + "/v1/chat/render", json={"model": "gpt-4o", "messages": QUESTION})
    assert render.status_code == 404
    assert_error_body(render.json(), schemas, type="not_found_error", code="model_not_found", param="model")


def test_unknown_route_is_404_in_openai_shape(default_server, schemas, client):
    response = httpx.get(default_server.base_url + "/v1/nothing-here")
    assert response.status_code == 404
    assert_error_body(response.json(), schemas, type="not_found_error")
    with pytest.raises(openai.NotFoundError):
        client.get("/nothing-here", cast_to=object)


def test_wrong_method_is_405_in_openai_shape(default_server, schemas):
    response = httpx.get(default_server.base_url + "/v1/chat/completions")
    assert response.status_code == 405
    assert_error_body(response.json(), schemas, type="invalid_request_error")


# --- 500 -----------------------------------------------------------------------------------


def test_unexpected_fault_is_500_without_internals(schemas):
    # No real engine fails on demand, so this isolates the error handler: the app itself,
    # in process, with a route that raises (the lifespan and its engine are not started).
    app = build_app()

    @app.get("/v1/boom")
    async def boom():
        raise RuntimeError("failed at /work/secret/path.py object at 0x7f00deadbeef")

    response = TestClient(app, raise_server_exceptions=False).get("/v1/boom")
    assert response.status_code == 500
    assert_error_body(response.json(), schemas, type="server_error")
    assert "secret" not in response.text


# --- an error after the stream began --------------------------------------------------------
#
# A request that outlives `request_timeout` (2 s): the server's own deadline, so these run in
# process on a fake engine that never stops writing (tests/support/inprocess.py), through the
# same app, socket and clients. tests/ops/test_front_door.py checks that the engine request is aborted.

NEVER_STOPS = {"ignore_eos": True, "max_tokens": 4000}


@pytest.fixture(scope="module")
def impatient_server():
    with serving_fake(FakeAsyncLLM(token_delay_s=0.01), request_timeout=2) as server:
        yield server


def test_error_after_stream_start_is_an_error_event_then_done(impatient_server, schemas):
    body = {"model": FAKE_MODEL, "messages": QUESTION, "stream": True, **NEVER_STOPS}
    with httpx.stream("POST", impatient_server.base_url + "/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        raw = b"".join(response.iter_raw()).decode()
    data = [line[len("data: "):] for line in raw.split("\n\n") if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    error = json.loads(data[-2])
    assert_error_body(error, schemas, type="server_error", code="timeout")
    assert any('"delta":{"content"' in payload for payload in data[:-2])  # tokens flowed first


def test_sdk_raises_on_an_error_event(impatient_server):
    client = openai.OpenAI(base_url=impatient_server.openai_base_url, api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model=FAKE_MODEL, messages=QUESTION, stream=True, max_tokens=4000, extra_body={"ignore_eos": True},
    )
    with pytest.raises(openai.APIError) as caught:
        for _ in stream:
            pass
    assert "timed out" in str(caught.value.message)


def test_a_responses_stream_ends_with_the_error_event(impatient_server, schemas):
    body = {
        "model": FAKE_MODEL, "input": "What is the capital of France?", "stream": True,
        "max_output_tokens": 4000, **NEVER_STOPS,
    }
    with httpx.stream("POST", impatient_server.base_url + "/v1/responses", json=body, timeout=60) as response:
        assert response.status_code == 200
        raw = b"".join(response.iter_raw()).decode()
    blocks = [block.split("\n") for block in raw.split("\n\n") if block.startswith("event: ")]
    kinds = [lines[0].removeprefix("event: ") for lines in blocks]
    assert "response.output_text.delta" in kinds and kinds[-1] == "error"  # tokens flowed first
    error = json.loads(blocks[-1][1].removeprefix("data: "))
    schemas.assert_valid("ResponseErrorEvent", error)
    assert error["code"] == "timeout" and "timed out" in error["message"]
    assert error["sequence_number"] == len(blocks) - 1
    assert "[DONE]" not in raw


def test_non_stream_timeout_is_a_clear_504(impatient_server, schemas):
    response = httpx.post(
        impatient_server.base_url + "/v1/chat/completions",
        json={"model": FAKE_MODEL, "messages": QUESTION, **NEVER_STOPS},
        timeout=60,
    )
    assert response.status_code == 504
    assert_error_body(response.json(), schemas, type="server_error", code="timeout", param=None)
