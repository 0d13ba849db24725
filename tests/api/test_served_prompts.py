"""The airoboros prompt and its stops through a running server (real engine).

Golden prompts through /v1/chat/render (G1's token ids with MPT's own GPT-NeoX tokenizer, on a
tiny MPT checkpoint's server, are in tests/models/test_served_mpt.py); the default stops `</s>` and `USER:` reached by the real model, with no
fragment of them reaching the client; the history policies on an over-long chat.
"""

from __future__ import annotations

import httpx
import pytest
from tokenizers import Tokenizer

from server.engine.default_model import checkpoint_dir
from server.settings import Settings
from tests.support.golden_cases import GOLDEN_CASES, SYSTEM, GoldenCase

pytestmark = pytest.mark.engine

DROPPED_HEADER = "x-airoboros-dropped-messages"

# Greedy SmolLM2 answers these few-shot sums and then writes the separator it was shown.
FEW_SHOT_SUMS = [
    {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
    {"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"},
    {"role": "user", "content": "5+5?"},
]
# Greedy SmolLM2 starts this dialogue by writing the `USER:` speaker tag.
DIALOGUE = [{"role": "user", "content": "Write a dialogue between USER and ASSISTANT."}]


def render(server, model: str, **body) -> httpx.Response:
    return httpx.post(server.base_url + "/v1/chat/render", json={"model": model, **body}, timeout=60)


# --- golden cases --------------------------------------------------------------------------


@pytest.mark.parametrize("case", GOLDEN_CASES, ids=lambda c: c.name)
def test_golden_case_through_render_endpoint(default_server, default_model_name, case: GoldenCase):
    response = render(default_server, default_model_name, messages=case.messages, **case.extensions)
    if case.prompt is None:
        assert response.status_code == 400
        assert response.json()["error"]["code"] == case.error_code
        assert response.json()["error"]["type"] == "invalid_request_error"
    else:
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["prompt"] == case.prompt
        assert body["num_tokens"] == len(body["token_ids"])
        assert body["max_model_len"] == 8192
        assert body["dropped_messages"] == 0


def test_closed_context_documents_are_validated_by_the_server(default_server, default_model_name):
    response = render(
        default_server, default_model_name, messages=[{"role": "user", "content": "Summarise."}],
        documents=[{"text": "first line\nENDINPUT\nsneaky", "metadata": {}}],
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "documents"


def test_the_tools_are_listed_in_the_prompt_unless_tool_choice_is_none(default_server, default_model_name):
    tool = {"type": "function", "function": {"name": "calc", "parameters": {"type": "object"}}}
    listed = render(default_server, default_model_name, messages=DIALOGUE, tools=[tool])
    assert listed.status_code == 200, listed.text
    assert "Available functions:" in listed.json()["prompt"] and "calc" in listed.json()["prompt"]
    # `none`: a prompt asking for JSON would make the model write JSON as text, so none is listed.
    unlisted = render(default_server, default_model_name, messages=DIALOGUE, tools=[tool], tool_choice="none")
    assert unlisted.status_code == 200, unlisted.text
    assert "Available functions:" not in unlisted.json()["prompt"] and "calc" not in unlisted.json()["prompt"]


# --- stops ---------------------------------------------------------------------------------


def chat_both_ways(client, model: str, messages, **fields):
    whole = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=30, **fields)
    chunks = list(client.chat.completions.create(
        model=model, messages=messages, temperature=0, max_tokens=30, stream=True, **fields
    ))
    deltas = [chunk.choices[0].delta.content or "" for chunk in chunks]
    stop_reasons = [
        getattr(chunk.choices[0], "stop_reason", None) for chunk in chunks if chunk.choices[0].finish_reason
    ]
    return whole.choices[0], deltas, stop_reasons


def test_model_written_end_of_turn_stops_and_is_never_sent(client, default_model_name):
    choice, deltas, stream_stop = chat_both_ways(client, default_model_name, FEW_SHOT_SUMS)
    assert choice.finish_reason == "stop"
    assert choice.stop_reason == "</s>" and stream_stop == ["</s>"]
    assert choice.message.content and "<" not in choice.message.content
    assert "".join(deltas) == choice.message.content
    assert not any("<" in delta for delta in deltas)


def test_model_written_user_tag_stops_and_is_never_sent(client, default_model_name):
    choice, deltas, stream_stop = chat_both_ways(client, default_model_name, DIALOGUE)
    assert choice.finish_reason == "stop"
    assert choice.stop_reason == "USER:" and stream_stop == ["USER:"]
    assert "U" not in choice.message.content
    assert not any("U" in delta for delta in deltas)


def test_client_stop_adds_to_the_default_stops(client, default_model_name):
    # A client stop that never occurs leaves the default `</s>` in force...
    choice, _, _ = chat_both_ways(client, default_model_name, FEW_SHOT_SUMS, stop=["zebra"])
    assert choice.stop_reason == "</s>"
    # ...and one that occurs first ends the answer there.
    plain, _, _ = chat_both_ways(client, default_model_name, FEW_SHOT_SUMS)
    first_char = plain.message.content[0]
    stopped, deltas, _ = chat_both_ways(client, default_model_name, FEW_SHOT_SUMS, stop=[first_char])
    assert stopped.stop_reason == first_char
    assert stopped.message.content == "" and "".join(deltas) == ""


# --- history policies ----------------------------------------------------------------------


def long_chat(exchanges: int, words: int) -> list[dict[str, str]]:
    filler = " ".join(["history"] * words)
    messages: list[dict[str, str]] = [{"role": "system", "content": "You are terse."}]
    for turn in range(exchanges):
        messages += [
            {"role": "user", "content": f"question {turn}: {filler}"},
            {"role": "assistant", "content": f"answer {turn}: {filler}"},
        ]
    messages.append({"role": "user", "content": "And the last question?"})
    return messages


OVERLONG = long_chat(exchanges=30, words=200)  # about 12,000 tokens against an 8,192 context


def test_history_error_is_a_400_with_the_counts(default_server, default_model_name):
    response = render(default_server, default_model_name, messages=OVERLONG, max_tokens=100)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "8192" in error["message"] and "100 in the completion" in error["message"]


def test_history_fit_drops_oldest_exchanges_until_it_fits(default_server, default_model_name):
    response = render(default_server, default_model_name, messages=OVERLONG, history="fit", max_tokens=100)
    assert response.status_code == 200
    body = response.json()
    assert body["num_tokens"] + 100 <= 8192
    assert body["dropped_messages"] > 0 and body["dropped_messages"] % 2 == 0
    assert response.headers[DROPPED_HEADER] == str(body["dropped_messages"])
    assert body["prompt"].startswith("You are terse. USER: question ")
    assert body["prompt"].endswith("</s>USER: And the last question? ASSISTANT: ")
    assert "question 0:" not in body["prompt"] and "question 29:" in body["prompt"]


def test_history_last_keeps_only_system_and_last_user(default_server, default_model_name):
    response = render(default_server, default_model_name, messages=OVERLONG, history="last")
    body = response.json()
    assert body["prompt"] == "You are terse. USER: And the last question? ASSISTANT: "
    assert body["dropped_messages"] == 60


def test_history_fit_generates_and_reports_dropped_messages(default_server, default_model_name):
    response = httpx.post(
        default_server.base_url + "/v1/chat/completions",
        json={"model": default_model_name, "messages": OVERLONG, "history": "fit", "max_tokens": 2},
        timeout=300,
    )
    assert response.status_code == 200, response.text
    assert int(response.headers[DROPPED_HEADER]) > 0
    assert response.json()["usage"]["prompt_tokens"] + 2 <= 8192


def test_default_max_tokens_is_clamped_to_the_context_left(default_server, default_model_name):
    # 8,178 tokens: 14 short of the 8,192 context, so the clamped default fills the context to its
    # last token (the boundary vLLM checks) and the answer stays short.
    messages = long_chat(exchanges=20, words=195)
    rendered = render(default_server, default_model_name, messages=messages).json()
    room = 8192 - rendered["num_tokens"]
    assert 0 < room < 64, room  # so the 1,024-token default would not fit
    response = httpx.post(
        default_server.base_url + "/v1/chat/completions",
        json={"model": default_model_name, "messages": messages, "ignore_eos": True, "temperature": 0},
        timeout=600,
    )
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == room
    assert response.json()["choices"][0]["finish_reason"] == "length"


def test_a_growing_chat_renders_the_ids_of_a_full_tokenization(default_server, default_model_name):
    """The server's ids come from its token cache, turn after turn; they must be exactly what the
    model's own tokenizer makes of the whole prompt (messages of every shape, empty ones too)."""
    tokenizer = Tokenizer.from_file(str(checkpoint_dir(Settings().resolved_cache_dir()) / "tokenizer.json"))
    replies = ["Sure.", "", "Voil\u00e0: caf\u00e9 \U0001f642", "  spaced  ", "It's 42!</s>", "\u65e5\u672c"]
    messages: list[dict] = [{"role": "system", "content": "Answer briefly."}]
    for turn, reply in enumerate(replies):
        messages.append({"role": "user", "content": f"Question {turn}? " + reply})
        body = render(default_server, default_model_name, messages=messages).json()
        assert body["token_ids"] == tokenizer.encode(body["prompt"], add_special_tokens=False).ids
        messages.append({"role": "assistant", "content": reply})


def test_system_prompt_is_never_cut(default_server, default_model_name):
    huge_system = [{"role": "system", "content": " ".join(["rule"] * 9000)}, {"role": "user", "content": "Hi"}]
    response = render(default_server, default_model_name, messages=huge_system, history="fit")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"
    assert SYSTEM not in response.text
