"""Usage the way peers report it: prefix-cache hits in `cached_tokens` (chat, completions,
responses, and a Prometheus counter), and `usage` on every chunk with
`stream_options.continuous_usage_stats`. Real server and engine (the shared default server)."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest

pytestmark = pytest.mark.engine

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
# About 1,900 tokens: many whole blocks for the prefix cache (vLLM's CPU build caches whole
# blocks of 128 tokens). What a hit saves in time to first token is a benchmark's question, not
# a test's: bench/prefix_cache.py prints it, cached beside cold.
LONG_TEXT = " ".join(f"Fact {i}: {i} times {i} is {i * i}." for i in range(100))


def fresh_system_text() -> str:
    # A prefix no other request has sent, so the first request finds nothing in the cache.
    return f"Session {uuid.uuid4().hex}. Read the facts, then answer.\n{LONG_TEXT}"


def cached_metric(server, route: str) -> float:
    text = httpx.get(server.base_url + "/metrics", timeout=10).text
    match = re.search(rf'^airoboros_cached_prompt_tokens_total{{route="{re.escape(route)}"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


# --- cached tokens -----------------------------------------------------------------------------


def test_a_long_chat_sent_twice_is_read_from_the_prefix_cache(client, default_server, default_model_name):
    messages = [{"role": "system", "content": fresh_system_text()}, *QUESTION]
    counted_before = cached_metric(default_server, "/v1/chat/completions")
    answers = [
        client.chat.completions.create(model=default_model_name, messages=messages, temperature=0, max_tokens=1)
        for _ in ("first", "second")
    ]
    first, second = (answer.usage for answer in answers)
    assert first.prompt_tokens == second.prompt_tokens > 1500
    assert first.prompt_tokens_details.cached_tokens == 0
    assert 0 < second.prompt_tokens_details.cached_tokens < second.prompt_tokens
    counted = cached_metric(default_server, "/v1/chat/completions") - counted_before
    assert counted == second.prompt_tokens_details.cached_tokens


def test_a_second_chat_turn_reads_the_first_turn_from_the_cache(client, default_model_name):
    system = {"role": "system", "content": fresh_system_text()}
    first = client.chat.completions.create(
        model=default_model_name, messages=[system, *QUESTION], temperature=0, max_tokens=16
    )
    second_turn = [
        system, *QUESTION, {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And of Italy?"},
    ]
    second = client.chat.completions.create(model=default_model_name, messages=second_turn, temperature=0, max_tokens=1)
    cached = second.usage.prompt_tokens_details.cached_tokens
    # The first turn's prompt is an exact prefix of the second's: all of it but the last,
    # partly filled cache block is found again.
    assert first.usage.prompt_tokens * 0.9 < cached <= second.usage.prompt_tokens


def test_completions_report_cached_tokens(client, default_model_name):
    prompt = fresh_system_text()
    usages = [
        client.completions.create(model=default_model_name, prompt=prompt, max_tokens=1, temperature=0).usage
        for _ in range(2)
    ]
    assert usages[0].prompt_tokens_details.cached_tokens == 0
    assert usages[1].prompt_tokens_details.cached_tokens > 0


def test_responses_report_cached_tokens(client, default_model_name):
    instructions = fresh_system_text()
    usages = [
        client.responses.create(
            model=default_model_name, instructions=instructions, input="What is 3 times 3?", max_output_tokens=1
        ).usage
        for _ in range(2)
    ]
    assert usages[0].input_tokens_details.cached_tokens == 0
    assert usages[0].input_tokens_details.cache_write_tokens > 0
    assert usages[1].input_tokens_details.cached_tokens > 0


# --- continuous usage ------------------------------------------------------------------------


def usage_of(chunk) -> tuple[int, int, int]:
    return chunk.usage.prompt_tokens, chunk.usage.completion_tokens, chunk.usage.total_tokens


@pytest.mark.parametrize("include_usage", [True, False], ids=["with include_usage", "alone"])
def test_continuous_usage_is_on_every_chat_chunk(client, default_model_name, schemas, include_usage):
    chunks = list(
        client.chat.completions.create(
            model=default_model_name, messages=QUESTION, temperature=0, max_tokens=16, stream=True,
            stream_options={"include_usage": include_usage, "continuous_usage_stats": True},
        )
    )
    for chunk in chunks:
        schemas.assert_valid("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
    assert all(chunk.usage is not None for chunk in chunks)
    usages = [usage_of(chunk) for chunk in chunks]
    prompt_tokens = usages[0][0]
    assert all(prompt == prompt_tokens and total == prompt + completion for prompt, completion, total in usages)
    completions = [completion for _, completion, _ in usages]
    assert completions == sorted(completions) and completions[0] == 0
    finished = [chunk for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    final = usage_of(finished[-1])
    assert final[1] == completions[-1] > 0
    if include_usage:
        assert chunks[-1].choices == [] and usages[-1] == final
    # The same count as the non-streaming answer.
    plain = client.chat.completions.create(model=default_model_name, messages=QUESTION, temperature=0, max_tokens=16)
    assert final == (plain.usage.prompt_tokens, plain.usage.completion_tokens, plain.usage.total_tokens)


def test_continuous_usage_is_on_every_completion_chunk(client, default_model_name):
    chunks = list(
        client.completions.create(
            model=default_model_name, prompt="The capital of France is", temperature=0, max_tokens=8, stream=True,
            stream_options={"include_usage": True, "continuous_usage_stats": True},
        )
    )
    assert all(chunk.usage is not None for chunk in chunks)
    completions = [chunk.usage.completion_tokens for chunk in chunks]
    assert completions == sorted(completions)
    assert chunks[-1].usage.completion_tokens == 8 and chunks[-1].choices == []


def test_without_the_option_only_the_last_chunk_has_usage(client, default_model_name):
    chunks = list(
        client.chat.completions.create(
            model=default_model_name, messages=QUESTION, temperature=0, max_tokens=8, stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert [chunk.usage is not None for chunk in chunks] == [False] * (len(chunks) - 1) + [True]
