"""Every request field of the contract shows its effect through the `openai` SDK.

Real server, real engine (the embedded default model). Every response body and stream chunk
is also validated against OpenAI's published schemas.
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest
from tokenizers import Tokenizer

from server.engine.default_model import checkpoint_dir
from server.settings import Settings
from tests.conftest import DEFAULT_MODEL_ALIAS

pytestmark = pytest.mark.engine

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def tokenizer(default_server) -> Tokenizer:
    return Tokenizer.from_file(str(checkpoint_dir(Settings().resolved_cache_dir()) / "tokenizer.json"))


@pytest.fixture(scope="module")
def eos_id(tokenizer) -> int:
    return tokenizer.token_to_id("<|im_end|>")


@pytest.fixture
def chat(client, default_model_name, schemas):
    """Non-streaming chat that checks the body against OpenAI's schema."""

    def create(messages=QUESTION, **fields):
        completion = client.chat.completions.create(model=default_model_name, messages=messages, **fields)
        schemas.assert_valid("CreateChatCompletionResponse", completion.model_dump(exclude_unset=True))
        return completion

    return create


@pytest.fixture
def chat_stream(client, default_model_name, schemas):
    """Streaming chat that checks every chunk against OpenAI's schema."""

    def create(messages=QUESTION, **fields):
        chunks = list(
            client.chat.completions.create(model=default_model_name, messages=messages, stream=True, **fields)
        )
        for chunk in chunks:
            schemas.assert_valid("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
        return chunks

    return create


def greedy_text(chat, **fields) -> str:
    return chat(temperature=0, max_tokens=24, **fields).choices[0].message.content


# --- counts and lengths --------------------------------------------------------------------


def test_n_three_gives_three_choices(chat):
    completion = chat(n=3, temperature=1.0, max_tokens=8, seed=11)
    assert [choice.index for choice in completion.choices] == [0, 1, 2]
    # A sampled choice may end early at a stop string, never later than max_tokens.
    assert all(choice.finish_reason in ("stop", "length") for choice in completion.choices)
    assert 3 <= completion.usage.completion_tokens <= 3 * 8


def test_max_tokens_five_ends_by_length_with_five_tokens(chat):
    completion = chat(max_tokens=5, temperature=0)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 5


def test_max_completion_tokens_is_honoured_like_max_tokens(chat):
    completion = chat(max_completion_tokens=4, temperature=0)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 4


# --- sampling ------------------------------------------------------------------------------


def test_temperature_zero_is_deterministic(chat):
    assert greedy_text(chat) == greedy_text(chat)


def test_same_seed_gives_same_text_and_other_seeds_differ(chat):
    def sampled(seed: int) -> str:
        return chat(temperature=1.0, max_tokens=24, seed=seed).choices[0].message.content

    first = sampled(1234)
    assert sampled(1234) == first
    others = {sampled(seed) for seed in (1, 2, 3)}
    assert others != {first}


def test_tiny_top_p_samples_the_greedy_token(chat):
    assert chat(temperature=1.0, top_p=1e-6, max_tokens=24, seed=7).choices[0].message.content == greedy_text(chat)


def test_top_k_one_samples_the_greedy_token(chat):
    assert chat(temperature=1.0, max_tokens=24, seed=7, extra_body={"top_k": 1}).choices[0].message.content == greedy_text(chat)


def test_min_p_one_samples_the_greedy_token(chat):
    assert chat(temperature=1.0, max_tokens=24, seed=7, extra_body={"min_p": 1.0}).choices[0].message.content == greedy_text(chat)


@pytest.mark.parametrize(
    "fields",
    [
        {"frequency_penalty": 2.0},
        {"presence_penalty": 2.0},
        {"extra_body": {"repetition_penalty": 1.8}},
    ],
    ids=["frequency_penalty", "presence_penalty", "repetition_penalty"],
)
def test_penalties_change_the_repetitive_greedy_answer(chat, fields):
    # The small model repeats "The capital of France is Paris." several times in 48 tokens;
    # a penalty on repeats must change that text.
    plain = chat(temperature=0, max_tokens=48).choices[0].message.content
    penalised = chat(temperature=0, max_tokens=48, **fields).choices[0].message.content
    assert penalised != plain


def test_logit_bias_minus_100_bans_a_token(chat, tokenizer):
    plain = greedy_text(chat)
    assert "Paris" in plain
    paris_ids = {tokenizer.token_to_id(token) for token in ("ĠParis", "Paris")} - {None}
    banned = chat(temperature=0, max_tokens=24, logit_bias={str(i): -100 for i in paris_ids}).choices[0].message.content
    assert "Paris" not in banned


def test_logit_bias_plus_100_forces_a_token(chat, tokenizer):
    forced_id = tokenizer.token_to_id("Ġbanana")
    completion = chat(temperature=0, max_tokens=6, logit_bias={str(forced_id): 100})
    assert completion.choices[0].message.content.split() == ["banana"] * 6


def test_client_stop_ends_before_the_stop_text(chat):
    completion = chat(temperature=0, max_tokens=24, stop=["Paris"])
    assert "Paris" not in completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"


def test_min_tokens_delays_a_forced_eos(chat, eos_id):
    eager_end = chat(temperature=0, max_tokens=20, logit_bias={str(eos_id): 100})
    assert eager_end.usage.completion_tokens == 1
    assert eager_end.choices[0].finish_reason == "stop"
    delayed = chat(temperature=0, max_tokens=20, logit_bias={str(eos_id): 100}, extra_body={"min_tokens": 6})
    assert delayed.usage.completion_tokens >= 6


def test_ignore_eos_generates_past_a_forced_eos(chat, eos_id):
    completion = chat(temperature=0, max_tokens=5, logit_bias={str(eos_id): 100}, extra_body={"ignore_eos": True})
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 5


def test_user_field_is_accepted_and_unused(chat):
    # Accepted (no 400) and unused: the greedy answer and its usage are what they are without it.
    # (That the engine gets the very same request is checked in process: tests/generation/test_driver.py.)
    with_user = chat(temperature=0, max_tokens=6, user="someone-123")
    without = chat(temperature=0, max_tokens=6)
    assert with_user.choices[0].message.content == without.choices[0].message.content
    assert with_user.usage == without.usage


# --- logprobs ------------------------------------------------------------------------------


def test_logprobs_are_non_positive_with_the_asked_number_of_alternatives(chat):
    completion = chat(temperature=0, max_tokens=6, logprobs=True, top_logprobs=3)
    content = completion.choices[0].logprobs.content
    assert len(content) == 6
    for entry in content:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        alternatives = [alt.logprob for alt in entry.top_logprobs]
        assert alternatives == sorted(alternatives, reverse=True)
        # Greedy: the chosen token is the most likely one.
        assert entry.logprob == pytest.approx(alternatives[0], abs=1e-4)


def test_logprobs_without_top_logprobs_give_only_the_chosen_token(chat):
    completion = chat(temperature=0, max_tokens=3, logprobs=True)
    assert all(entry.top_logprobs == [] for entry in completion.choices[0].logprobs.content)


# --- structured output -----------------------------------------------------------------------


def test_json_object_output_parses(chat):
    completion = chat(
        messages=[{"role": "user", "content": "Give the capital of France as JSON with a key 'capital'."}],
        temperature=0, max_tokens=60, response_format={"type": "json_object"},
    )
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(completion.choices[0].message.content), dict)


def test_json_schema_output_validates_against_the_schema(chat):
    schema = {
        "type": "object",
        # Bounded strings: a small model can otherwise fill a field until the token limit.
        "properties": {"city": {"type": "string", "maxLength": 20}, "country": {"type": "string", "maxLength": 20}},
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    completion = chat(
        messages=[{"role": "user", "content": "Name the capital of France and its country."}],
        temperature=0, max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "capital", "schema": schema}},
    )
    assert completion.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(completion.choices[0].message.content), schema)


# --- streaming -----------------------------------------------------------------------------


def test_stream_with_n_two_interleaves_indexed_choices(chat_stream):
    chunks = chat_stream(n=2, temperature=1.0, max_tokens=12, seed=3)
    indexes = [chunk.choices[0].index for chunk in chunks]
    assert set(indexes) == {0, 1}
    for index in (0, 1):
        own = [chunk.choices[0] for chunk in chunks if chunk.choices[0].index == index]
        assert own[0].delta.role == "assistant"
        finish = [c.finish_reason for c in own if c.finish_reason]
        assert len(finish) == 1 and finish[0] in ("stop", "length")


def test_include_usage_adds_a_final_usage_chunk(chat_stream, chat):
    chunks = chat_stream(temperature=0, max_tokens=7, stream_options={"include_usage": True})
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 7
    assert chunks[-1].usage.prompt_tokens == chat(temperature=0, max_tokens=1).usage.prompt_tokens
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_stream_without_include_usage_has_no_usage_chunk(chat_stream):
    chunks = chat_stream(temperature=0, max_tokens=4)
    assert all(chunk.choices for chunk in chunks)


def test_stream_logprobs_arrive_with_the_tokens(chat_stream):
    chunks = chat_stream(temperature=0, max_tokens=5, logprobs=True, top_logprobs=2)
    entries = [e for chunk in chunks if chunk.choices[0].logprobs for e in chunk.choices[0].logprobs.content]
    assert len(entries) == 5
    assert all(len(e.top_logprobs) == 2 and e.logprob <= 0 for e in entries)


# --- completions ---------------------------------------------------------------------------


@pytest.fixture
def complete(client, default_model_name, schemas):
    def create(**fields):
        completion = client.completions.create(model=default_model_name, **fields)
        body = completion.model_dump(exclude_unset=True)
        if not fields.get("echo"):
            schemas.assert_valid("CreateCompletionResponse", body)
        return completion

    return create


def test_completions_take_a_raw_prompt(complete):
    completion = complete(prompt="The capital of France is", temperature=0, max_tokens=4)
    assert "Paris" in completion.choices[0].text
    assert completion.object == "text_completion"


def test_completions_prompt_list_gives_one_choice_per_prompt_and_sample(complete):
    completion = complete(prompt=["One, two,", "Red, green,"], n=2, temperature=1.0, max_tokens=3)
    assert [choice.index for choice in completion.choices] == [0, 1, 2, 3]
    assert completion.usage.completion_tokens == 12


def test_completions_echo_returns_prompt_then_completion(complete):
    prompt = "The capital of France is"
    completion = complete(prompt=prompt, echo=True, temperature=0, max_tokens=3)
    assert completion.choices[0].text.startswith(prompt)
    assert len(completion.choices[0].text) > len(prompt)


def test_completions_echo_logprobs_cover_prompt_and_completion(complete, schemas):
    completion = complete(prompt="The capital of France is", echo=True, logprobs=2, temperature=0, max_tokens=3)
    logprobs = completion.choices[0].logprobs
    prompt_tokens = completion.usage.prompt_tokens
    assert len(logprobs.tokens) == prompt_tokens + 3
    # The first prompt token has no logprob: nothing precedes it. OpenAI's legacy API and
    # vLLM answer null there, which is the one place OpenAI's published schema (numbers only)
    # is stricter than OpenAI's own behaviour.
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert all(value <= 0 for value in logprobs.token_logprobs[1:])
    problems = schemas.errors("CreateCompletionResponse", completion.model_dump(exclude_unset=True))
    assert all(problem.startswith("choices/0/logprobs") for problem in problems), problems


def test_completions_logprobs_count(complete):
    completion = complete(prompt="Hello", logprobs=3, temperature=0, max_tokens=4)
    logprobs = completion.choices[0].logprobs
    assert len(logprobs.tokens) == 4
    assert all(len(top) == 3 for top in logprobs.top_logprobs)
    assert logprobs.text_offset == sorted(logprobs.text_offset)


def test_completions_stream(client, default_model_name, schemas):
    chunks = list(client.completions.create(
        model=default_model_name, prompt="The capital of France is", temperature=0, max_tokens=6,
        stream=True, stream_options={"include_usage": True},
    ))
    text = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    assert "Paris" in text
    assert chunks[-1].usage.completion_tokens == 6
    finish = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert finish == ["length"]
    for chunk in chunks:
        if chunk.choices and chunk.choices[0].finish_reason:
            schemas.assert_valid("CreateCompletionResponse", chunk.model_dump(exclude_unset=True))
        elif chunk.choices:
            # Mid-stream chunks carry finish_reason null, as OpenAI's own streams do; the
            # published schema describes only the finished object.
            problems = schemas.errors("CreateCompletionResponse", chunk.model_dump(exclude_unset=True))
            assert all(problem.startswith("choices/0/finish_reason") for problem in problems), problems


def test_completions_return_tokens_as_token_ids(complete):
    completion = complete(
        prompt="Hello", logprobs=1, temperature=0, max_tokens=3, extra_body={"return_tokens_as_token_ids": True}
    )
    assert all(token.startswith("token_id:") and token[9:].isdigit() for token in completion.choices[0].logprobs.tokens)


# --- models --------------------------------------------------------------------------------


def test_models_list_validates_and_contains_the_alias(default_server, schemas, default_model_name):
    body = httpx.get(default_server.base_url + "/v1/models").json()
    schemas.assert_valid("ListModelsResponse", body)
    assert [card["id"] for card in body["data"]] == [default_model_name, DEFAULT_MODEL_ALIAS]


def test_retrieve_model_by_name(client, default_model_name, schemas):
    card = client.models.retrieve(default_model_name)
    assert card.id == default_model_name
    schemas.assert_valid("Model", card.model_dump(exclude_unset=True))


def test_alias_serves_the_same_model(client, default_model_name):
    by_alias = client.chat.completions.create(model=DEFAULT_MODEL_ALIAS, messages=QUESTION, temperature=0, max_tokens=8)
    by_name = client.chat.completions.create(model=default_model_name, messages=QUESTION, temperature=0, max_tokens=8)
    assert by_alias.choices[0].message.content == by_name.choices[0].message.content


def test_version_names_server_and_engine(default_server):
    body = httpx.get(default_server.base_url + "/version").json()
    assert body["engine"] == "vllm" and body["engine_version"] == "0.32.0"
    assert body["version"]
