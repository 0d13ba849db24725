"""A backend of the Kubernetes inference gateway (issue 24), on one real server and engine.

The endpoint picker tokenizes a request through the render routes and follows the replicas' KV
events and load: so the render routes' `token_ids` must be exactly the engine's prompt (checked
against `usage` and the engine's own prompt ids, logged under `--log-prompts`), their JSON must be
vLLM's `GenerateRequest`, the KV events must carry those ids with hashes the documented algorithm
recomputes, and the load a router reads must count the requests our admission gate holds.

The server: an API key, `--log-prompts`, a 512-token context (so history fitting is quick to
reach), admission 3 and one engine sequence at a time (so admission fills with 3 requests), KV
events on a loopback ZMQ endpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Iterator

import cbor2
import httpx
import msgspec
import pytest
import zmq

from tests.support.server import free_port, launch_server, stop_server

API_KEY = "gateway-test-key"
MAX_MODEL_LEN = 512
MAX_INFLIGHT = 3
WAIT_S = 60


@pytest.fixture(scope="module")
def kv_events_endpoint() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def server(kv_events_endpoint):
    server = launch_server(
        api_key=API_KEY,
        env={
            "AIROBOROS_LOG_PROMPTS": "1",
            "AIROBOROS_MAX_MODEL_LEN": str(MAX_MODEL_LEN),
            "AIROBOROS_MAX_INFLIGHT": str(MAX_INFLIGHT),
            "AIROBOROS_MAX_NUM_SEQS": "1",
            "AIROBOROS_KV_EVENTS_ENDPOINT": kv_events_endpoint,
            "AIROBOROS_KV_EVENTS_TOPIC": "kv-test",
        },
    )
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def subscriber(server, kv_events_endpoint) -> Iterator[zmq.Socket]:
    """A ZMQ subscriber of the server's KV events, connected as soon as the server is up."""
    context = zmq.Context()
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.SUBSCRIBE, b"kv-test")
    socket.connect(kv_events_endpoint)
    try:
        yield socket
    finally:
        socket.close(linger=0)
        context.term()


def post(server, path: str, body: dict, request_id: str | None = None, **headers: str) -> httpx.Response:
    extra = {"X-Request-Id": request_id} if request_id else {}
    return httpx.post(
        server.base_url + path, json=body, headers={**server.headers(), **extra, **headers}, timeout=WAIT_S
    )


def validated_generate_request(body: dict) -> object:
    """`body` read by vLLM's own `GenerateRequest` model, as vLLM's `/generate` reads it."""
    from vllm.entrypoints.scale_out.token_in_token_out.protocol import GenerateRequest

    return GenerateRequest.model_validate(body)


# --- render: token_ids are the engine's prompt ---------------------------------------------------


def _long_history(turns: int) -> list[dict]:
    messages = [{"role": "system", "content": "You are terse."}]
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Turn {turn}: " + "tell me about rivers and lakes " * 8})
        messages.append({"role": "assistant", "content": "Rivers flow into lakes and seas. " * 6})
    messages.append({"role": "user", "content": "And now, mountains?"})
    return messages


CHAT_CASES = {
    "plain": {"messages": [{"role": "user", "content": "Name a colour."}]},
    "documents": {
        "messages": [{"role": "user", "content": "What is the code word?"}],
        "documents": [{"text": "The code word is heliotrope.", "metadata": {"source": "memo"}}],
    },
    "plainformat": {"messages": [{"role": "user", "content": "Write hello world in C."}], "plainformat": True},
    "fitted-history": {"messages": _long_history(12), "history": "fit"},
}


@pytest.mark.parametrize("case", sorted(CHAT_CASES))
def test_chat_render_token_ids_are_the_engines_prompt(server, case):
    body = {"model": server.model, "max_tokens": 4, "temperature": 0, **CHAT_CASES[case]}
    rendered = post(server, "/v1/chat/completions/render", {**body, "prompt_cache_key": f"user-{case}"})
    assert rendered.status_code == 200, rendered.text
    generate = rendered.json()
    validated = validated_generate_request(generate)
    request_id = f"render-chat-{case}-{uuid.uuid4().hex[:8]}"
    answer = post(server, "/v1/chat/completions", body, request_id)
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["prompt_tokens"] == len(generate["token_ids"])
    assert server.access_log_entry(request_id)["prompt_token_ids"] == [generate["token_ids"]]
    assert validated.token_ids == generate["token_ids"]
    assert validated.sampling_params.max_tokens == 4 and validated.sampling_params.temperature == 0
    assert validated.model == server.model and generate["prompt_cache_key"] == f"user-{case}"
    # The format's own stops are in the engine's sampling parameters, as the engine gets them.
    assert validated.sampling_params.stop
    dropped = int(rendered.headers["X-Airoboros-Dropped-Messages"])
    assert dropped == int(answer.headers["X-Airoboros-Dropped-Messages"])
    assert (dropped > 0) == (case == "fitted-history")


def test_completions_render_answers_one_generate_request_per_prompt(server):
    prompts = ["The capital of France is", "Once upon a time, in a quiet village,"]
    body = {"model": server.model, "prompt": prompts, "max_tokens": 3, "temperature": 0, "seed": 7}
    rendered = post(server, "/v1/completions/render", {**body, "prompt_cache_key": "tenant-a"})
    assert rendered.status_code == 200, rendered.text
    generates = rendered.json()
    assert isinstance(generates, list) and len(generates) == 2
    validated = [validated_generate_request(item) for item in generates]
    assert [item["request_id"] for item in generates] == [f"{generates[0]['request_id'][:-2]}-{i}" for i in range(2)]
    request_id = f"render-completions-{uuid.uuid4().hex[:8]}"
    answer = post(server, "/v1/completions", body, request_id)
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["prompt_tokens"] == sum(len(item["token_ids"]) for item in generates)
    assert server.access_log_entry(request_id)["prompt_token_ids"] == [item["token_ids"] for item in generates]
    assert all(item.sampling_params.seed == 7 and item.sampling_params.max_tokens == 3 for item in validated)
    assert all(item["prompt_cache_key"] == "tenant-a" for item in generates)


def test_responses_render_is_the_chat_rendering_of_the_input(server):
    body = {"model": server.model, "instructions": "Answer in one word.", "input": "Sky colour?", "max_output_tokens": 5}
    rendered = post(server, "/v1/responses/render", {**body, "prompt_cache_key": "conv-9"})
    assert rendered.status_code == 200, rendered.text
    generate = rendered.json()
    validated = validated_generate_request(generate)
    chat = post(server, "/v1/chat/completions/render", {
        "model": server.model, "max_tokens": 5,
        "messages": [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Sky colour?"}],
    }).json()
    assert generate["token_ids"] == chat["token_ids"]
    assert validated.sampling_params.max_tokens == 5 and generate["prompt_cache_key"] == "conv-9"
    request_id = f"render-responses-{uuid.uuid4().hex[:8]}"
    answer = post(server, "/v1/responses", body, request_id)
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["input_tokens"] == len(generate["token_ids"])
    assert server.access_log_entry(request_id)["prompt_token_ids"] == [generate["token_ids"]]


ERROR_CASES = {
    "unknown model": ("/v1/chat/completions", {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}),
    "tools": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}),
    "too long": ("/v1/chat/completions", {"messages": _long_history(12)}),
    "bad type": ("/v1/chat/completions", {"messages": "not a list"}),
    "suffix": ("/v1/completions", {"prompt": "hi", "suffix": "there"}),
    "empty prompt": ("/v1/completions", {"prompt": ""}),
    "stored response": ("/v1/responses", {"input": "hi", "previous_response_id": "resp_1"}),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_render_errors_are_the_generating_routes(server, case):
    path, body = ERROR_CASES[case]
    body = {"model": server.model, **body}
    generating = post(server, path, body)
    rendering = post(server, path + "/render", body)
    assert 400 <= generating.status_code < 500, generating.text
    assert (rendering.status_code, rendering.json()) == (generating.status_code, generating.json())
    # And the next request works.
    assert post(server, "/v1/chat/completions/render", {"model": server.model, "messages": [{"role": "user", "content": "hi"}]}).status_code == 200


@pytest.mark.parametrize("path", ["/v1/chat/completions/render", "/v1/completions/render", "/v1/responses/render"])
def test_render_routes_need_the_api_key(server, path):
    response = httpx.post(server.base_url + path, json={"model": server.model, "prompt": "hi"}, timeout=WAIT_S)
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


