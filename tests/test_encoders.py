"""The routes' encoders: the fast content frame is byte for byte the general chunk, for any text."""

from __future__ import annotations

import json

from hypothesis import given, settings, strategies as st
from prometheus_client import CollectorRegistry

from server.api.chat_encoder import ChatEncoder
from server.api.completion_encoder import CompletionEncoder
from server.generation import EnginePrompt, Outcome
from server.metrics import Metrics

# Any text a tokenizer can produce, control characters, quotes, surrogate-free unicode included.
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=64)


def outcome() -> Outcome:
    return Outcome(route="/test", request_id="rid", metrics=Metrics(CollectorRegistry()), deadline=0.0)


def chat_encoder() -> ChatEncoder:
    return ChatEncoder(request_id="rid", model="m\"odel", n=3, outcome=outcome(), token_text=str)


def completion_encoder() -> CompletionEncoder:
    return CompletionEncoder(
        request_id="rid", model="m\"odel", prompts=[EnginePrompt([1], "p", None)], n=3,
        outcome=outcome(), token_text=str,
    )


@settings(max_examples=300, deadline=None)
@given(text=TEXT, index=st.integers(min_value=0, max_value=2))
def test_chat_content_frame_equals_the_general_chunk(text, index):
    encoder = chat_encoder()
    general = encoder.chunk([{"index": index, "delta": {"content": text}, "logprobs": None, "finish_reason": None}])
    assert encoder.content(index, text) == general
    assert json.loads(general.removeprefix("data: "))["choices"][0]["delta"]["content"] == text


@settings(max_examples=300, deadline=None)
@given(text=TEXT, index=st.integers(min_value=0, max_value=2))
def test_completion_content_frame_equals_the_general_chunk(text, index):
    encoder = completion_encoder()
    general = encoder.chunk([{"index": index, "text": text, "logprobs": None, "finish_reason": None}])
    assert encoder.content(index, text) == general
    assert json.loads(general.removeprefix("data: "))["choices"][0]["text"] == text


def test_every_frame_is_one_data_line_ending_in_a_blank_line():
    encoder = chat_encoder()
    frame = encoder.content(0, "two\nlines\r\nand a \u2028 separator")
    assert frame.startswith("data: ") and frame.endswith("\n\n") and frame.count("\n") == 2 and "\r" not in frame
