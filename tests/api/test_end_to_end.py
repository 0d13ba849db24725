"""The real server on the real engine (embedded default model), driven by real clients."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

pytestmark = pytest.mark.engine

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def async_client(default_server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=default_server.openai_base_url, api_key="unused", max_retries=0)


def test_greedy_answer_names_paris(client, default_model_name):
    completion = client.chat.completions.create(
        model=default_model_name, messages=QUESTION, temperature=0, max_tokens=24
    )
    answer = completion.choices[0].message.content
    assert "Paris" in answer
    assert completion.choices[0].message.role == "assistant"
    assert answer == answer.strip()


def test_usage_counts_prompt_and_completion_tokens(client, default_model_name, default_server):
    completion = client.chat.completions.create(
        model=default_model_name, messages=QUESTION, temperature=0, max_tokens=7
    )
    rendered = httpx.post(
        default_server.base_url + "/v1/chat/render", json={"model": default_model_name, "messages": QUESTION}
    ).json()
    assert completion.usage.prompt_tokens == rendered["num_tokens"]
    assert completion.usage.completion_tokens == 7
    assert completion.usage.total_tokens == rendered["num_tokens"] + 7
    assert completion.choices[0].finish_reason == "length"


def test_sync_stream_sends_role_then_content_then_finish_reason(client, default_model_name):
    chunks = list(
        client.chat.completions.create(
            model=default_model_name, messages=QUESTION, temperature=0, max_tokens=24, stream=True
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert "Paris" in text
    finish = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices[0].finish_reason]
    assert finish == [chunks[-1].choices[0].finish_reason] and finish[0] in ("stop", "length")
    assert len({chunk.id for chunk in chunks}) == 1


def test_stream_and_non_stream_give_the_same_greedy_text(client, default_model_name):
    whole = client.chat.completions.create(
        model=default_model_name, messages=QUESTION, temperature=0, max_tokens=30
    ).choices[0].message.content
    streamed = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(
            model=default_model_name, messages=QUESTION, temperature=0, max_tokens=30, stream=True
        )
    )
    assert streamed == whole


def test_async_client_non_stream_and_stream_concurrently(async_client, default_model_name):
    async def both() -> tuple[str, str]:
        async def stream_text() -> str:
            stream = await async_client.chat.completions.create(
                model=default_model_name, messages=QUESTION, temperature=0, max_tokens=16, stream=True
            )
            return "".join([chunk.choices[0].delta.content or "" async for chunk in stream])

        whole, streamed = await asyncio.gather(
            async_client.chat.completions.create(
                model=default_model_name, messages=QUESTION, temperature=0, max_tokens=16
            ),
            stream_text(),
        )
        return whole.choices[0].message.content, streamed

    whole, streamed = asyncio.run(both())
    assert "Paris" in whole
    assert streamed == whole


def test_sse_framing_on_the_wire(default_server, default_model_name):
    body = {"model": default_model_name, "messages": QUESTION, "max_tokens": 8, "stream": True}
    with httpx.stream("POST", default_server.base_url + "/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        raw = b"".join(response.iter_raw()).decode()
    assert raw.endswith("data: [DONE]\n\n")
    events = [event for event in raw.split("\n\n") if event]
    assert "\r" not in raw
    for event in events:
        # Every event is one `data: ` line or one comment line, nothing else.
        assert event.count("\n") == 0, event
        assert event.startswith("data: ") or event.startswith(":"), event
    data = [event[len("data: "):] for event in events if event.startswith("data: ")]
    assert data[-1] == "[DONE]"
    for payload in data[:-1]:
        assert json.loads(payload)["object"] == "chat.completion.chunk"


def test_models_lists_the_served_model_with_its_context(default_server, default_model_name):
    models = httpx.get(default_server.base_url + "/v1/models").json()
    assert models["object"] == "list"
    card = models["data"][0]
    assert card["id"] == default_model_name == "smollm2-135m-instruct"
    assert card["max_model_len"] == 8192
    assert card["prompt_format"] == "airoboros"


def test_health_answers_200_with_the_phase(default_server):
    response = httpx.get(default_server.base_url + "/health")
    assert response.headers["content-type"] == "application/json"
    assert (response.status_code, response.json()) == (200, {"status": "ready"})
