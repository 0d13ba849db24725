"""vLLM's per-token logprob dictionaries → OpenAI's chat and completions shapes (pure).

The entries are vLLM's own `Logprob` objects, as the engine hands them out.
"""

from __future__ import annotations

import math

from vllm.logprobs import Logprob

from server.api.encoders.logprobs import CompletionLogprobs, chat_logprob_content


def token_text(token_id: int) -> str:
    return f"<{token_id}>"


def position(chosen: int, **alternatives: float) -> dict[int, Logprob]:
    """One position: the chosen token at rank 1 (-0.5, decoded by vLLM) and undecoded alternatives."""
    entries = {chosen: Logprob(-0.5, 1, f"t{chosen}")}
    for rank, (token, value) in enumerate(alternatives.items(), start=2):
        entries[int(token.removeprefix("id"))] = Logprob(value, rank, None)
    return entries


def test_chat_content_ranks_alternatives_and_decodes_what_vllm_did_not():
    content = chat_logprob_content([7], [position(7, id9=-3.0, id8=-1.0)], 2, token_text)
    (entry,) = content
    assert (entry["token"], entry["logprob"], entry["bytes"]) == ("t7", -0.5, list(b"t7"))
    assert [alt["token"] for alt in entry["top_logprobs"]] == ["t7", "<8>"]  # best first, cut at 2
    assert [alt["logprob"] for alt in entry["top_logprobs"]] == [-0.5, -1.0]


def test_minus_infinity_becomes_a_finite_number_json_can_carry():
    content = chat_logprob_content([7], [{7: Logprob(-math.inf, 1, "x")}], 0, token_text)
    assert content[0]["logprob"] == -9999.0 and content[0]["top_logprobs"] == []


def test_completion_logprobs_accumulate_text_offsets_and_take_only_what_is_new():
    collector = CompletionLogprobs(1, token_text, as_ids=False)
    collector.add([1, 7], [None, position(7, id3=-2.0)])  # an echoed prompt: its first token has none
    first = collector.take()
    assert first["tokens"] == ["<1>", "t7"]
    assert first["token_logprobs"] == [None, -0.5]
    assert first["top_logprobs"] == [None, {"t7": -0.5}]
    assert first["text_offset"] == [0, 3]
    collector.add([4], [position(4)])
    assert collector.take() == {"tokens": ["t4"], "token_logprobs": [-0.5], "top_logprobs": [{"t4": -0.5}], "text_offset": [5]}


def test_tokens_as_ids_name_tokens_by_id_and_do_not_advance_offsets():
    collector = CompletionLogprobs(1, token_text, as_ids=True)
    collector.add([7, 4], [position(7, id3=-2.0), position(4)])
    body = collector.as_dict()
    assert body["tokens"] == ["token_id:7", "token_id:4"]
    assert body["top_logprobs"][0] == {"token_id:7": -0.5}
    assert body["text_offset"] == [0, 0]
