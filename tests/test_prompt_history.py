"""Fitting long chats into the budget: R11 and the `history` extension (error / fit / last)."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from prompt_formats import ContextLengthExceeded, PromptFormatError, get_format

SYSTEM = {"role": "system", "content": "You are a patient historian who answers at length."}


@pytest.fixture(scope="module")
def neox_tokenize(neox_tokenizer_file):
    tokenizer = Tokenizer.from_file(str(neox_tokenizer_file))
    return lambda text: tokenizer.encode(text, add_special_tokens=False).ids


@pytest.fixture
def fmt():
    return get_format()


def long_chat(exchanges: int) -> list[dict]:
    """System, `exchanges` user/assistant pairs of varied length, and a final user question."""
    messages = [SYSTEM]
    for i in range(exchanges):
        question = f"Question {i}: tell me about year {1900 + i}."
        messages.append({"role": "user", "content": question})
        facts = " ".join(f"In {1900 + i} event number {j} happened." for j in range(3 + i % 7))
        messages.append({"role": "assistant", "content": facts})
    messages.append({"role": "user", "content": "And what happened last?"})
    return messages


def without_oldest_exchanges(messages: list[dict], count: int) -> list[dict]:
    return [messages[0], *messages[1 + 2 * count :]]


def prompt_tokens(fmt, tokenize, messages, **kwargs) -> int:
    return len(tokenize(fmt.render(messages, **kwargs)))


def test_chat_that_fits_is_untouched_under_every_policy(fmt, neox_tokenize):
    messages = long_chat(5)
    for history in ("error", "fit", "last"):
        fitted = fmt.render_fitted(
            messages, tokenize=neox_tokenize, max_prompt_tokens=8192, history=history
        )
        assert fitted.prompt == fmt.render(messages)
        assert fitted.dropped_messages == 0


def test_error_policy_raises_with_the_counts(fmt, neox_tokenize):
    messages = long_chat(20)
    full = prompt_tokens(fmt, neox_tokenize, messages)
    with pytest.raises(ContextLengthExceeded) as caught:
        fmt.render_fitted(messages, tokenize=neox_tokenize, max_prompt_tokens=full - 1)
    error = caught.value
    assert (error.prompt_tokens, error.max_prompt_tokens) == (full, full - 1)
    assert (error.code, error.param) == ("context_length_exceeded", "messages")
    assert str(full) in error.message and str(full - 1) in error.message


def test_error_policy_accepts_a_prompt_exactly_at_the_budget(fmt, neox_tokenize):
    messages = long_chat(20)
    full = prompt_tokens(fmt, neox_tokenize, messages)
    fitted = fmt.render_fitted(messages, tokenize=neox_tokenize, max_prompt_tokens=full)
    assert len(fitted.token_ids) == full


def test_fit_keeps_system_and_last_user_drops_fewest_oldest_exchanges(fmt, neox_tokenize):
    messages = long_chat(30)
    budget = prompt_tokens(fmt, neox_tokenize, messages) // 2
    fitted = fmt.render_fitted(
        messages, tokenize=neox_tokenize, max_prompt_tokens=budget, history="fit"
    )
    dropped_exchanges = fitted.dropped_messages // 2
    assert fitted.dropped_messages % 2 == 0 and 0 < dropped_exchanges < 30
    kept = without_oldest_exchanges(messages, dropped_exchanges)
    assert fitted.prompt == fmt.render(kept)
    assert fitted.prompt.startswith(SYSTEM["content"] + " USER: ")
    assert fitted.prompt.endswith("USER: And what happened last? ASSISTANT: ")
    assert fitted.token_ids == neox_tokenize(fitted.prompt)
    assert len(fitted.token_ids) <= budget
    one_fewer = without_oldest_exchanges(messages, dropped_exchanges - 1)
    assert prompt_tokens(fmt, neox_tokenize, one_fewer) > budget


def test_fit_counts_every_message_of_merged_runs(fmt, neox_tokenize):
    messages = [
        SYSTEM,
        {"role": "user", "content": "Part one of a long question. " * 30},
        {"role": "user", "content": "Part two of it. " * 30},
        {"role": "assistant", "content": "A long answer. " * 60},
        {"role": "assistant", "content": "And a postscript."},
        {"role": "user", "content": "Short follow-up?"},
    ]
    budget = prompt_tokens(fmt, neox_tokenize, [SYSTEM, messages[-1]])
    fitted = fmt.render_fitted(
        messages, tokenize=neox_tokenize, max_prompt_tokens=budget, history="fit"
    )
    assert fitted.dropped_messages == 4
    assert fitted.prompt == fmt.render([SYSTEM, messages[-1]])


def test_fit_tokenizes_the_whole_prompt_twice_however_many_it_drops(fmt, neox_tokenize):
    messages = long_chat(60)
    full_prompt_calls = 0

    def counting_tokenize(text: str) -> list[int]:
        nonlocal full_prompt_calls
        full_prompt_calls += text.startswith(SYSTEM["content"])
        return neox_tokenize(text)

    budget = prompt_tokens(fmt, neox_tokenize, messages) // 4
    fitted = fmt.render_fitted(
        messages, tokenize=counting_tokenize, max_prompt_tokens=budget, history="fit"
    )
    assert fitted.dropped_messages > 40
    assert full_prompt_calls == 2


def test_fit_raises_with_the_smallest_prompt_when_even_that_is_too_long(fmt, neox_tokenize):
    messages = long_chat(10)
    smallest = prompt_tokens(fmt, neox_tokenize, [SYSTEM, messages[-1]])
    with pytest.raises(ContextLengthExceeded) as caught:
        fmt.render_fitted(
            messages, tokenize=neox_tokenize, max_prompt_tokens=smallest - 1, history="fit"
        )
    assert (caught.value.prompt_tokens, caught.value.max_prompt_tokens) == (smallest, smallest - 1)


def test_fit_never_cuts_a_single_message_chat(fmt, neox_tokenize):
    messages = [{"role": "user", "content": "word " * 500}]
    with pytest.raises(ContextLengthExceeded):
        fmt.render_fitted(messages, tokenize=neox_tokenize, max_prompt_tokens=100, history="fit")


def test_last_keeps_only_system_and_last_user_message(fmt, neox_tokenize):
    messages = long_chat(10)
    budget = prompt_tokens(fmt, neox_tokenize, messages) - 1
    fitted = fmt.render_fitted(
        messages, tokenize=neox_tokenize, max_prompt_tokens=budget, history="last"
    )
    assert fitted.prompt == fmt.render([SYSTEM, messages[-1]])
    assert fitted.dropped_messages == 20


def test_last_keeps_the_prefill(fmt, neox_tokenize):
    messages = [*long_chat(10), {"role": "assistant", "content": "Well,"}]
    budget = prompt_tokens(fmt, neox_tokenize, messages, continue_final_message=True) - 1
    fitted = fmt.render_fitted(
        messages,
        tokenize=neox_tokenize,
        max_prompt_tokens=budget,
        history="last",
        continue_final_message=True,
    )
    assert fitted.prompt.endswith("USER: And what happened last? ASSISTANT: Well,")
    assert fitted.prompt.startswith(SYSTEM["content"] + " USER: And what happened last?")
    assert fitted.dropped_messages == 20


def test_unknown_history_policy_is_a_client_error(fmt, neox_tokenize):
    with pytest.raises(PromptFormatError) as caught:
        fmt.render_fitted(
            long_chat(1), tokenize=neox_tokenize, max_prompt_tokens=10, history="oldest"
        )
    assert (caught.value.code, caught.value.param) == ("invalid_history", "history")


@pytest.mark.parametrize(
    "count",
    [lambda n: n * n // 200 + 1, lambda n: int(n**0.5) + 1],
    ids=["superadditive", "subadditive"],
)
def test_fit_is_minimal_even_when_token_counts_do_not_add_up(fmt, count):
    """Estimates from pieces are off for such tokenizers; verification must still find the
    fewest exchanges to drop."""

    def tokenize(text: str) -> list[int]:
        return [7] * count(len(text))

    messages = long_chat(25)
    budget = prompt_tokens(fmt, tokenize, messages) * 2 // 3
    fitted = fmt.render_fitted(messages, tokenize=tokenize, max_prompt_tokens=budget, history="fit")
    dropped_exchanges = fitted.dropped_messages // 2
    assert fitted.prompt == fmt.render(without_oldest_exchanges(messages, dropped_exchanges))
    assert len(fitted.token_ids) <= budget
    one_fewer = without_oldest_exchanges(messages, dropped_exchanges - 1)
    assert prompt_tokens(fmt, tokenize, one_fewer) > budget
