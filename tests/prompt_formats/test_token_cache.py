"""Token ids from cached pieces are exactly a full tokenization's, with both shipped tokenizers.

The contract of `TokenCache`: `render_fitted` through it returns the same prompt, the same ids
and the same dropped count as with the plain `tokenize`, for any chat, and a tokenizer whose
joins are not exact gets full tokenizations instead. Checked with hypothesis over random chats
on GPT-NeoX-20B (MPT-30B's) and the embedded default model's (SmolLM2) tokenizers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from prompt_formats import PromptFormatError, TokenCache, get_format
from prompt_formats.airoboros import AiroborosFormat

Tokenize = Callable[[str], list[int]]


@pytest.fixture(scope="module")
def neox_tokenize(neox_tokenizer_file) -> Tokenize:
    tokenizer = Tokenizer.from_file(str(neox_tokenizer_file))
    return lambda text: tokenizer.encode(text, add_special_tokens=False).ids


@pytest.fixture(scope="module")
def smollm2_tokenize() -> Tokenize:
    """The embedded default model's tokenizer: its tokenizer.json, which the engine's
    transformers tokenizer wraps (test_prompt_server checks the server's ids against it)."""
    from server.engine.default_model import prepare_default_model
    from server.settings import Settings

    checkpoint = prepare_default_model(Settings().resolved_cache_dir())
    tokenizer = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    return lambda text: tokenizer.encode(text, add_special_tokens=False).ids


@pytest.fixture(scope="module", params=["gpt-neox-20b", "smollm2"])
def tokenize(request) -> Tokenize:
    fixture = {"gpt-neox-20b": "neox_tokenize", "smollm2": "smollm2_tokenize"}[request.param]
    return request.getfixturevalue(fixture)


@pytest.fixture(scope="module")
def cache(tokenize) -> TokenCache:
    """One cache per tokenizer for the whole module, as the server keeps one: examples share it."""
    return get_format().token_cache(tokenize, max_bytes=4 << 20)


# --- random chats ---------------------------------------------------------------------------

# Tokenizing long random texts is slow for hypothesis' taste; the examples are still bounded.
RELAXED = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}

TRICKY = [
    "", " ", "\n", "\t x \n", "</s>", "USER:", "ASSISTANT:", "USER: hi ASSISTANT: ho</s>",
    "PLAINFORMAT", "it's", "'", "42", "x\u00b2", "\u00e9", "e\u0301", "\U0001f642",
    "\U0001f3f3\ufe0f\u200d\U0001f308", "<|endoftext|>", "<|im_end|>", "a  b", "   spaced   ",
    "\u65e5\u672c\u8a9e", "\u0627\u0644\u0639\u0631\u0628\u064a\u0629", "ENDINPUT", "BEGININPUT x",
]
words = st.sampled_from(
    ["the", "The", " ", "  ", "\n", "\n\n", ".", ",", "?", "'s", "42", "1999", "USER", "</s>",
     "ASSISTANT:", "\u00e9t\u00e9", "\U0001f600", "\u4e2d\u6587", "code()", "`x`", "\t"]
)
texts = st.one_of(
    st.sampled_from(TRICKY),
    st.text(max_size=40),
    st.lists(words, max_size=400).map("".join),  # long messages of word-like runs
    st.text(alphabet=st.characters(codec="utf-8"), max_size=300),
)
parts = st.lists(texts, min_size=1, max_size=3).map(
    lambda texts: [{"type": "text", "text": text} for text in texts]
)
contents = st.one_of(texts, parts)
metadata = st.dictionaries(st.sampled_from(["url", "date", "k"]), texts, max_size=2)


@st.composite
def chats(draw) -> dict:
    messages: list[dict] = []
    system = draw(st.sampled_from(["none", "empty", "text"]))
    if system == "empty":
        messages.append({"role": "system", "content": ""})
    elif system == "text":
        messages.append({"role": "system", "content": draw(texts)})
    for _ in range(draw(st.integers(0, 8))):
        for role in ("user", "assistant"):
            for _ in range(draw(st.sampled_from([1, 1, 1, 2]))):  # runs of one role merge (R6)
                messages.append({"role": role, "content": draw(contents)})
    messages.append({"role": "user", "content": draw(contents)})
    request: dict = {"messages": messages, "plainformat": draw(st.booleans())}
    if draw(st.booleans()):
        request["continue_final_message"] = True
        messages.append({"role": "assistant", "content": draw(texts)})
    if draw(st.integers(0, 3)) == 0:
        request["documents"] = [
            {"text": draw(texts), "metadata": draw(metadata)}
            for _ in range(draw(st.integers(0, 2)))
        ]
    return request


def fitted_both_ways(fmt, request: dict, tokenize: Tokenize, cache: TokenCache, **kwargs):
    try:
        expected = fmt.render_fitted(tokenize=tokenize, **request, **kwargs)
    except PromptFormatError as error:
        with pytest.raises(type(error)) as caught:
            fmt.render_fitted(tokenize=cache, **request, **kwargs)
        assert (caught.value.code, str(caught.value)) == (error.code, str(error))
        return None, None
    return expected, fmt.render_fitted(tokenize=cache, **request, **kwargs)


# --- the contract ---------------------------------------------------------------------------


def test_shipped_tokenizers_join_safely(cache):
    assert cache.joins_safely, f"the boundary check failed on {cache.unsafe_probe!r}"


@settings(max_examples=150, **RELAXED)
@given(request=chats())
def test_cached_ids_equal_a_full_tokenization(tokenize, cache, request):
    fmt = get_format()
    expected, got = fitted_both_ways(fmt, request, tokenize, cache, max_prompt_tokens=1 << 20)
    if expected is not None:
        assert got == expected
        assert got.token_ids == list(tokenize(got.prompt))


@settings(max_examples=80, **RELAXED)
@given(
    request=chats(),
    history=st.sampled_from(["error", "fit", "last"]),
    share=st.floats(0.05, 1.0),
)
def test_history_policies_choose_the_same_prompt_with_the_cache(
    tokenize, cache, request, history, share
):
    fmt = get_format()
    try:
        whole = len(tokenize(fmt.render(**request)))
    except PromptFormatError:
        return
    budget = max(1, int(whole * share))
    expected, got = fitted_both_ways(
        fmt, request, tokenize, cache, max_prompt_tokens=budget, history=history
    )
    if expected is not None:
        assert got == expected
        assert got.token_ids == list(tokenize(got.prompt))


@settings(max_examples=25, **RELAXED)
@given(request=chats())
def test_a_growing_chat_stays_exact_turn_after_turn(tokenize, cache, request):
    """Each turn re-sends the history plus one exchange: the realistic case the cache is for."""
    fmt = get_format()
    messages = request["messages"]
    for end in range(1, len(messages) + 1):
        turn = {**request, "messages": messages[:end]}
        expected, got = fitted_both_ways(fmt, turn, tokenize, cache, max_prompt_tokens=1 << 20)
        if expected is not None:
            assert got == expected


# --- what the cache does -------------------------------------------------------------------


def counting(tokenize: Tokenize) -> tuple[Tokenize, list[str]]:
    calls: list[str] = []

    def counted(text: str) -> list[int]:
        calls.append(text)
        return tokenize(text)

    return counted, calls


def chat_of(exchanges: int) -> list[dict]:
    messages = [{"role": "system", "content": "Be brief."}]
    for i in range(exchanges):
        messages += [
            {"role": "user", "content": f"Question {i}: what happened in {1900 + i}?"},
            {"role": "assistant", "content": f"In {1900 + i}, event {i} happened. " * (1 + i % 3)},
        ]
    return [*messages, {"role": "user", "content": "And then?"}]


def test_a_new_turn_tokenizes_only_the_new_reply_and_question(neox_tokenize):
    fmt = get_format()
    counted, calls = counting(neox_tokenize)
    cache = fmt.token_cache(counted)
    history = chat_of(20)
    fmt.render_fitted(history, tokenize=cache, max_prompt_tokens=8192)
    calls.clear()
    next_turn = [
        *history,
        {"role": "assistant", "content": "Then nothing."},
        {"role": "user", "content": "Sure?"},
    ]
    fitted = fmt.render_fitted(next_turn, tokenize=cache, max_prompt_tokens=8192)
    assert sorted(calls) == sorted([" ASSISTANT: Then nothing.</s>", "USER: Sure?"])
    assert fitted.token_ids == neox_tokenize(fitted.prompt)


class MergesAcrossBoundaries:
    """A toy tokenizer that merges `>U` (the `</s>` | `USER` boundary) into one token, as a
    BPE without pre-tokenization may: joining pieces' ids there is wrong."""

    MERGED = 1000

    def __call__(self, text: str) -> list[int]:
        ids: list[int] = []
        i = 0
        while i < len(text):
            if text.startswith(">U", i):
                ids.append(self.MERGED)
                i += 2
            else:
                ids.append(ord(text[i]))
                i += 1
        return ids


def test_a_tokenizer_that_merges_across_boundaries_gets_full_tokenizations():
    fmt = get_format()
    merging = MergesAcrossBoundaries()
    counted, calls = counting(merging)
    cache = fmt.token_cache(counted)
    assert not cache.joins_safely
    assert cache.unsafe_probe is not None
    messages = chat_of(3)
    layout = fmt.layout(fmt.conversation(messages))
    joined = [i for piece in layout.pieces() for i in merging(piece)]
    assert joined != merging(layout.prompt())  # what a cache that trusted the joins would send
    calls.clear()
    fitted = fmt.render_fitted(messages, tokenize=cache, max_prompt_tokens=8192)
    assert fitted.token_ids == merging(fitted.prompt)
    assert calls == [fitted.prompt]  # one full tokenization, no pieces
    assert len(cache) == 0


def test_a_cache_checked_for_another_format_is_not_trusted(neox_tokenize):
    class Other(AiroborosFormat):
        name = "other"

    counted, calls = counting(neox_tokenize)
    cache = get_format().token_cache(counted)
    calls.clear()
    fitted = Other().render_fitted(chat_of(3), tokenize=cache, max_prompt_tokens=8192)
    assert calls == [fitted.prompt]
    assert fitted.token_ids == neox_tokenize(fitted.prompt)


def test_the_cache_stays_within_its_limit_and_keeps_what_is_used(neox_tokenize):
    fmt = get_format()
    counted, calls = counting(neox_tokenize)
    limit = 64 * 1024
    cache = fmt.token_cache(counted, max_bytes=limit)
    kept = chat_of(4)
    for i in range(60):
        fmt.render_fitted(kept, tokenize=cache, max_prompt_tokens=8192)
        other = [{**m, "content": f"{m['content']} (chat {i})"} for m in chat_of(6)]
        fitted = fmt.render_fitted(other, tokenize=cache, max_prompt_tokens=8192)
        assert fitted.token_ids == neox_tokenize(fitted.prompt)
        assert 0 < cache.cached_bytes <= limit
    assert len(cache) < 60 * 14  # older chats were evicted
    calls.clear()
    fmt.render_fitted(kept, tokenize=cache, max_prompt_tokens=8192)
    assert calls == []  # the chat used on every round is still cached


def test_a_piece_larger_than_the_whole_cache_is_used_but_not_kept(neox_tokenize):
    fmt = get_format()
    cache = fmt.token_cache(neox_tokenize, max_bytes=16 * 1024)
    huge = [{"role": "user", "content": "word " * 5000}]
    fitted = fmt.render_fitted(huge, tokenize=cache, max_prompt_tokens=8192)
    assert fitted.token_ids == neox_tokenize(fitted.prompt)
    assert cache.cached_bytes <= 16 * 1024
    assert "USER: " + huge[0]["content"].strip() not in cache._entries


def test_threads_sharing_one_cache_get_exact_ids(neox_tokenize):
    fmt = get_format()
    cache = fmt.token_cache(neox_tokenize, max_bytes=48 * 1024)  # small: evictions race lookups
    chats = [
        [{**m, "content": f"{m['content']} #{n}"} for m in chat_of(8)] for n in range(6)
    ]
    expected = [neox_tokenize(fmt.render(chat)) for chat in chats]
    failures: list[str] = []

    def work(offset: int) -> None:
        for round_ in range(15):
            index = (offset + round_) % len(chats)
            ids = fmt.render_fitted(chats[index], tokenize=cache, max_prompt_tokens=8192).token_ids
            if ids != expected[index]:
                failures.append(f"thread {offset}, chat {index}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    assert cache.cached_bytes == sum(cache._sizes.values()) <= 48 * 1024


def test_chatml_pieces_join_safely_on_the_stand_ins_tokenizer(smollm2_tokenize):
    chatml = get_format("chatml")
    cache = chatml.token_cache(smollm2_tokenize, max_bytes=1 << 20)
    assert cache.joins_safely, f"the boundary check failed on {cache.unsafe_probe!r}"
    messages = [
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    expected = chatml.render_fitted(messages, tokenize=smollm2_tokenize, max_prompt_tokens=4096)
    assert chatml.render_fitted(messages, tokenize=cache, max_prompt_tokens=4096) == expected
    assert expected.token_ids == smollm2_tokenize(chatml.render(messages))
