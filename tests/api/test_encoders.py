"""The routes' encoders: the fast content frame is byte for byte the general chunk, for any text."""

from __future__ import annotations

import json

from hypothesis import given, settings, strategies as st
from prometheus_client import CollectorRegistry

from server.api.encoders.chat import ChatEncoder
from server.api.encoders.completions import CompletionEncoder
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


# --- tool answers ---------------------------------------------------------------------------------

TOOL_ANSWERS = [
    '[{"name": "get_weather", "arguments": {"city": "Pa\\"ris", "days": [1, 2]}}, {"name": "now", "arguments": {}}]',
    '{"answer": "Sunny \\u00e9 \\ud83d\\ude00\\nbye"}',
]


def _completion(finish_reason):
    from types import SimpleNamespace

    return SimpleNamespace(finish_reason=finish_reason, stop_reason=None, token_ids=[], logprobs=None)


@settings(max_examples=200, deadline=None)
@given(answer=st.sampled_from(TOOL_ANSWERS), cuts=st.lists(st.integers(0, 110), max_size=10))
def test_a_streamed_tool_answer_carries_exactly_the_calls_and_content_of_the_body(answer, cuts):
    from server.generation import FinalChoice

    stream = ChatEncoder(request_id="rid", model="m", n=1, outcome=outcome(), token_text=str, tool_choice="auto")
    pieces = [answer[start:end] for start, end in zip([0, *sorted(cuts)], [*sorted(cuts), len(answer)])]
    frames = "".join(stream.choice(0, piece, _completion(None), None) for piece in pieces[:-1])
    frames += stream.choice(0, pieces[-1], _completion("stop"), None)
    chunks = [json.loads(frame.removeprefix("data: ")) for frame in frames.split("\n\n") if frame]
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
    content = "".join(delta.get("content") or "" for delta in deltas)
    heads = [call for delta in deltas for call in delta.get("tool_calls", ()) if "id" in call]
    arguments: dict[int, str] = {}
    for delta in deltas:
        for call in delta.get("tool_calls", ()):
            arguments[call["index"]] = arguments.get(call["index"], "") + call["function"]["arguments"]

    body = ChatEncoder(request_id="rid", model="m", n=1, outcome=outcome(), token_text=str, tool_choice="auto").body(
        [FinalChoice(0, answer, _completion("stop"), None)]
    )
    (choice,) = body["choices"]
    message = choice["message"]
    assert chunks[-1]["choices"][0]["finish_reason"] == choice["finish_reason"]
    assert content == (message["content"] or "")
    calls = message.get("tool_calls", [])
    assert [(head["index"], head["type"], head["function"]["name"], head["function"]["arguments"]) for head in heads] == [
        (index, "function", call["function"]["name"], "") for index, call in enumerate(calls)
    ]
    assert [arguments[index] for index in range(len(calls))] == [call["function"]["arguments"] for call in calls]
    assert choice["finish_reason"] == ("tool_calls" if calls else "stop")
    assert all(call["id"].startswith("call_") for call in calls)
