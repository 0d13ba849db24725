"""The shared generation path (driver, choice assembly, both routes' encoders, SSE), in process.

The whole app serves a fake vLLM engine (tests/support/inprocess.py) that writes a known reply,
so every byte the server adds can be checked exactly: the frames of a chat and a completions
stream, the same text and logprobs streamed and not, choice numbering across prompts and
samples, a format stop string the model writes never reaching the client, `user` reaching
nothing, and what a stream that fails or a client that leaves turn into. The same clients as
against the real server (the openai SDK, httpx) and OpenAI's published schemas judge it.
"""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from harness.fake_engine import FakeAsyncLLM
from tests.support.inprocess import FAKE_MODEL, serving_fake
from harness.sse import parse_sse_line

REPLY = "Four. Paris is in France."
QUESTION = [{"role": "user", "content": "What is 2+2?"}]


@pytest.fixture(scope="module")
def server():
    with serving_fake(FakeAsyncLLM(reply=REPLY)) as server:
        yield server


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_base_url, api_key="unused", max_retries=0)


def raw_stream(server, path: str, body: dict, **headers: str) -> str:
    with httpx.stream("POST", server.base_url + path, json={**body, "stream": True}, headers=headers, timeout=30) as response:
        assert response.status_code == 200, response.read()
        return b"".join(response.iter_raw()).decode()


def data_events(raw: str) -> list[dict]:
    events = [frame for frame in raw.split("\n\n") if frame]
    assert events[-1] == "data: [DONE]"
    return [json.loads(frame[len("data: "):]) for frame in events[:-1] if frame.startswith("data: ")]


# --- chat -------------------------------------------------------------------------------------


def test_a_chat_stream_is_keepalive_role_content_finish_usage_done(server, schemas):
    body = {"model": FAKE_MODEL, "messages": QUESTION, "stream_options": {"include_usage": True}}
    raw = raw_stream(server, "/v1/chat/completions", body)
    assert raw.startswith(": keep-alive\n\n")
    chunks = data_events(raw)
    for chunk in chunks:
        schemas.assert_valid("CreateChatCompletionStreamResponse", chunk)
    role, *content, finish, usage = chunks
    assert role["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]
    assert "".join(c["choices"][0]["delta"]["content"] for c in content + [finish] if c["choices"][0]["delta"]) == REPLY
    assert all(c["choices"][0]["finish_reason"] is None for c in content)
    assert finish["choices"][0]["finish_reason"] == "stop" and finish["choices"][0]["stop_reason"] is None
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == len(REPLY.encode()) + 1  # and EOS
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")


def test_stream_and_body_carry_the_same_text_and_usage(client, schemas):
    whole = client.chat.completions.create(model=FAKE_MODEL, messages=QUESTION, max_tokens=11)
    schemas.assert_valid("CreateChatCompletionResponse", whole.model_dump(exclude_unset=True))
    chunks = list(client.chat.completions.create(
        model=FAKE_MODEL, messages=QUESTION, max_tokens=11, stream=True, stream_options={"include_usage": True}
    ))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert whole.choices[0].message.content == REPLY[:11] and whole.choices[0].finish_reason == "length"
    assert chunks[-1].usage == whole.usage and whole.usage.completion_tokens == 11


def test_n_choices_are_numbered_and_each_finishes_once(client):
    chunks = list(client.chat.completions.create(model=FAKE_MODEL, messages=QUESTION, n=3, max_tokens=5, stream=True))
    texts = {i: "" for i in range(3)}
    finishes = []
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes.append(choice.index)
    assert texts == {i: REPLY[:5] for i in range(3)}
    assert sorted(finishes) == [0, 1, 2]


def test_a_format_stop_the_model_writes_never_reaches_the_client():
    # The model ends its turn with `</s>` and starts the next speaker's tag: both are the format's stops.
    with serving_fake(FakeAsyncLLM(reply="Four.</s>USER: and five?")) as server:
        sdk = openai.OpenAI(base_url=server.openai_base_url, api_key="unused", max_retries=0)
        whole = sdk.chat.completions.create(model=FAKE_MODEL, messages=QUESTION)
        chunks = list(sdk.chat.completions.create(model=FAKE_MODEL, messages=QUESTION, stream=True))
    assert whole.choices[0].message.content == "Four."
    assert (whole.choices[0].finish_reason, whole.choices[0].stop_reason) == ("stop", "</s>")
    deltas = [c.choices[0].delta.content or "" for c in chunks]
    assert "".join(deltas) == "Four." and not any("<" in d for d in deltas)
    assert [getattr(c.choices[0], "stop_reason", None) for c in chunks if c.choices[0].finish_reason] == ["</s>"]


def test_chat_logprobs_streamed_add_up_to_the_body(client, schemas):
    fields = {"model": FAKE_MODEL, "messages": QUESTION, "max_tokens": 5, "logprobs": True, "top_logprobs": 2}
    whole = client.chat.completions.create(**fields)
    schemas.assert_valid("CreateChatCompletionResponse", whole.model_dump(exclude_unset=True))
    content = whole.choices[0].logprobs.content
    assert [entry.token for entry in content] == list(REPLY[:5])
    for entry in content:
        assert entry.logprob <= 0 and entry.bytes == list(entry.token.encode())
        assert len(entry.top_logprobs) == 2 and entry.top_logprobs[0].token == entry.token
    streamed = [e for c in client.chat.completions.create(**fields, stream=True)
                if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.model_dump() for e in streamed] == [e.model_dump() for e in content]


def test_user_is_accepted_and_reaches_nothing(server, client):
    with_user = client.chat.completions.create(model=FAKE_MODEL, messages=QUESTION, max_tokens=8, user="someone-123")
    without = client.chat.completions.create(model=FAKE_MODEL, messages=QUESTION, max_tokens=8)
    assert with_user.choices[0].message.content == without.choices[0].message.content
    # The engine got the very same request: same prompt, same sampling parameters.
    asked_with, asked_without = server.llm.started[-2:]
    assert asked_with.prompt_ids == asked_without.prompt_ids
    assert repr(asked_with.params) == repr(asked_without.params)


# --- completions ------------------------------------------------------------------------------


def test_completion_choices_go_prompt_major_streamed_and_not(server, client):
    whole = client.completions.create(model=FAKE_MODEL, prompt=["One,", "Red,"], n=2, max_tokens=4)
    assert [c.index for c in whole.choices] == [0, 1, 2, 3]
    assert {c.text for c in whole.choices} == {REPLY[:4]}
    raw = raw_stream(server, "/v1/completions", {"model": FAKE_MODEL, "prompt": ["One,", "Red,"], "n": 2, "max_tokens": 4})
    texts: dict[int, str] = {}
    finished = []
    for chunk in data_events(raw):
        for choice in chunk["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
            if choice["finish_reason"]:
                finished.append(choice["index"])
    assert texts == {i: REPLY[:4] for i in range(4)} and sorted(finished) == [0, 1, 2, 3]


def test_echo_with_logprobs_is_the_same_streamed_and_not(server, client, schemas):
    fields = {"model": FAKE_MODEL, "prompt": "Hi there", "max_tokens": 3, "echo": True, "logprobs": 1}
    whole = client.completions.create(**fields)
    # The first prompt token's null logprob is the one place OpenAI's schema (numbers only) is
    # stricter than OpenAI's legacy API and vLLM (see test_openai_fields).
    problems = schemas.errors("CreateCompletionResponse", whole.model_dump(exclude_unset=True))
    assert all(problem.startswith("choices/0/logprobs") for problem in problems), problems
    choice = whole.choices[0]
    assert choice.text == "Hi there" + REPLY[:3]
    logprobs = choice.logprobs
    assert logprobs.tokens == list("Hi there" + REPLY[:3])
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None  # nothing precedes it
    assert logprobs.text_offset == list(range(len(choice.text)))
    chunks = data_events(raw_stream(server, "/v1/completions", fields))
    assert "".join(c["choices"][0]["text"] for c in chunks) == choice.text
    streamed_tokens = [t for c in chunks if c["choices"][0]["logprobs"] for t in c["choices"][0]["logprobs"]["tokens"]]
    assert streamed_tokens == logprobs.tokens


def test_tokens_as_ids_name_every_token_by_its_id(client):
    choice = client.completions.create(
        model=FAKE_MODEL, prompt="Hi", max_tokens=3, logprobs=0, extra_body={"return_tokens_as_token_ids": True}
    ).choices[0]
    assert choice.logprobs.tokens == [f"token_id:{byte + 3}" for byte in REPLY[:3].encode()]
    assert choice.logprobs.text_offset == [0, 0, 0]


# --- failures and clients that leave ------------------------------------------------------------


def test_engine_death_mid_stream_ends_it_with_an_error_event_then_done(schemas):
    llm = FakeAsyncLLM(reply=REPLY, token_delay_s=0.02)
    with serving_fake(llm) as server:
        events = []
        with httpx.stream("POST", server.base_url + "/v1/completions", timeout=30, json={
            "model": FAKE_MODEL, "prompt": "Hi", "max_tokens": 1000, "ignore_eos": True, "stream": True,
        }) as response:
            for line in response.iter_lines():
                if (event := parse_sse_line(line)) is not None:
                    events.append(event)
                    if event.content and not llm.is_dead:
                        llm.kill()
        assert events[-1].is_done and events[-2].is_error, events[-3:]
        error = events[-2].json()
        schemas.assert_valid("ErrorResponse", error)
        assert (error["error"]["type"], error["error"]["code"]) == ("server_error", "unavailable")
        assert "engine" in error["error"]["message"]
        deadline = time.monotonic() + 10  # the watchdog sees the death within a second
        while not server.exit_codes and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.exit_codes == [1]


def test_a_client_that_leaves_a_stream_aborts_its_engine_request(server):
    server.llm.token_delay_s = 0.02
    try:
        with httpx.stream("POST", server.base_url + "/v1/completions", timeout=30,
                          headers={"X-Request-Id": "leaves-stream"}, json={
                              "model": FAKE_MODEL, "prompt": "Hi", "max_tokens": 5000, "ignore_eos": True, "stream": True,
                          }) as response:
            lines = response.iter_lines()
            next(line for line in lines if (event := parse_sse_line(line)) and event.content)
    finally:
        server.llm.token_delay_s = 0.0
    request = server.llm.started[-1]
    deadline = time.monotonic() + 5
    while server.llm.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.llm.running == 0 and request.request_id in server.llm.aborted
    assert request.request_id.startswith("leaves-stream-")
    assert server.access_log_entry("leaves-stream")["aborted"] == "disconnect"  # waits for the line
