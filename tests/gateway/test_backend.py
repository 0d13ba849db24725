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

import json
import re
import time
import uuid
from collections.abc import Iterator

import httpx
import msgspec
import pytest
import zmq

from harness.kv_blocks import block_hashes
from harness.server import free_port, launch_server, stop_server

API_KEY = "gateway-test-key"
MAX_MODEL_LEN = 512
MAX_INFLIGHT = 3
WAIT_S = 60


@pytest.fixture(scope="module")
def kv_events_endpoint() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def subscriber(kv_events_endpoint) -> Iterator[zmq.Socket]:
    """A ZMQ subscriber of the server's KV events. It binds, as the endpoint picker does: vLLM's
    publisher connects to an endpoint without a wildcard (vllm/distributed/kv_events.py)."""
    context = zmq.Context()
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.SUBSCRIBE, b"kv-test")
    socket.bind(kv_events_endpoint)
    try:
        yield socket
    finally:
        context.destroy(linger=0)


@pytest.fixture(scope="module")
def server(subscriber, kv_events_endpoint):
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


# --- KV events -----------------------------------------------------------------------------------


def _decoder():
    from vllm.distributed.kv_events import KVEventBatch

    return msgspec.msgpack.Decoder(type=KVEventBatch)


def _stored_blocks(subscriber: zmq.Socket, decoder, until: float) -> Iterator[object]:
    """BlockStored events as they arrive, until the deadline."""
    from vllm.distributed.kv_events import BlockStored

    while time.monotonic() < until:
        if not subscriber.poll(timeout=200):
            continue
        _topic, _sequence, payload = subscriber.recv_multipart()
        for event in decoder.decode(payload).events:
            if isinstance(event, BlockStored):
                yield event


def _chat_body(model: str, words: int) -> dict:
    # A fresh first line: no block of this prompt is in the engine's prefix cache yet.
    text = f"Note {uuid.uuid4().hex}. " + " ".join(f"word{i}" for i in range(words))
    return {"model": model, "max_tokens": 2, "temperature": 0, "messages": [{"role": "user", "content": text}]}


def test_kv_events_carry_the_rendered_blocks_with_the_documented_hashes(server, subscriber):
    decoder = _decoder()
    # ZMQ drops what is published before the engine's publisher has connected and learnt the
    # subscription: blocks of some request (this one's, or an earlier test's) prove the link.
    for _ in range(5):
        assert post(server, "/v1/chat/completions", _chat_body(server.model, 60)).status_code == 200
        if next(_stored_blocks(subscriber, decoder, time.monotonic() + 10), None) is not None:
            break
    else:
        pytest.fail("no BlockStored event reached the subscriber after 5 requests")

    body = _chat_body(server.model, 120)
    token_ids = post(server, "/v1/chat/completions/render", body).json()["token_ids"]
    assert post(server, "/v1/chat/completions", body).status_code == 200
    stored: dict[int, list[int]] = {}
    block_size = None
    expected: list[int] = []
    for event in _stored_blocks(subscriber, decoder, time.monotonic() + WAIT_S):
        block_size = event.block_size
        expected = block_hashes(token_ids, block_size)
        for position, block_hash in enumerate(event.block_hashes):
            stored[block_hash] = event.token_ids[position * block_size:(position + 1) * block_size]
        if set(expected) <= set(stored):
            break
    assert block_size is not None and len(token_ids) >= block_size, (len(token_ids), block_size)
    assert expected and set(expected) <= set(stored), f"hashes {expected} not all among {sorted(stored)}"
    for position, block_hash in enumerate(expected):
        assert stored[block_hash] == token_ids[position * block_size:(position + 1) * block_size]


# --- load signals ----------------------------------------------------------------------------------


def _metric(server, name: str) -> float:
    page = httpx.get(server.base_url + "/metrics", headers=server.headers(), timeout=WAIT_S).text
    values = [float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", page, re.MULTILINE)]
    assert values, f"{name} is not on /metrics"
    return sum(values)


def _orca(header: str) -> dict[str, float]:
    kind, _, data = header.partition(" ")
    if kind == "JSON":
        return json.loads(data)["named_metrics"]
    assert kind == "TEXT", header
    pairs = [item.strip().split("=") for item in data.split(",")]
    return {key.removeprefix("named_metrics."): float(value) for key, value in pairs}


@pytest.mark.parametrize("metrics_format", ["TEXT", "JSON", "text"])
def test_the_orca_header_comes_in_the_format_asked(server, metrics_format):
    body = {"model": server.model, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    response = post(server, "/v1/chat/completions", body, **{"endpoint-load-metrics-format": metrics_format})
    assert response.status_code == 200
    header = response.headers["endpoint-load-metrics"]
    assert header.startswith(metrics_format.upper() + " ")
    report = _orca(header)
    assert set(report) == {"kv_cache_usage_perc", "num_requests_waiting"}
    assert 0 <= report["kv_cache_usage_perc"] <= 1 and report["num_requests_waiting"] >= 0
    completion = post(server, "/v1/completions", {"model": server.model, "prompt": "hi", "max_tokens": 2},
                      **{"endpoint-load-metrics-format": metrics_format})
    assert set(_orca(completion.headers["endpoint-load-metrics"])) == set(report)


@pytest.mark.parametrize("metrics_format", [None, "XML", ""])
def test_no_orca_header_unless_asked_in_a_known_format(server, metrics_format):
    asked = {} if metrics_format is None else {"endpoint-load-metrics-format": metrics_format}
    response = post(server, "/v1/completions", {"model": server.model, "prompt": "hi", "max_tokens": 2}, **asked)
    assert response.status_code == 200 and "endpoint-load-metrics" not in response.headers


def test_waiting_counts_the_requests_the_full_gate_holds(server):
    body = {"model": server.model, "prompt": "Count slowly:", "max_tokens": 400, "ignore_eos": True, "stream": True}
    clients = [httpx.Client(timeout=WAIT_S) for _ in range(MAX_INFLIGHT)]
    streams = []
    try:
        for position, client in enumerate(clients):
            # Response headers mean admitted: the gate lets a request in before its answer starts.
            asked = {"endpoint-load-metrics-format": "TEXT"} if position == MAX_INFLIGHT - 1 else {}
            request = client.build_request(
                "POST", server.base_url + "/v1/completions", json=body, headers={**server.headers(), **asked}
            )
            streams.append(client.send(request, stream=True))
            assert streams[-1].status_code == 200
        refused = post(server, "/v1/completions", {**body, "stream": False})
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "server_busy"
        assert _metric(server, "airoboros_requests_in_flight") == MAX_INFLIGHT
        # One sequence runs at a time (--max-num-seqs 1): the other admitted ones wait.
        assert _orca(streams[-1].headers["endpoint-load-metrics"])["num_requests_waiting"] >= MAX_INFLIGHT - 1
        deadline = time.monotonic() + WAIT_S
        while (waiting := _metric(server, "vllm:num_requests_waiting")) != MAX_INFLIGHT - 1 or _metric(
            server, "vllm:num_requests_running"
        ) != 1:
            assert time.monotonic() < deadline, f"waiting {waiting}, not {MAX_INFLIGHT - 1}, after {WAIT_S} s"
            time.sleep(0.1)
    finally:
        for stream in streams:
            stream.close()
        for client in clients:
            client.close()
