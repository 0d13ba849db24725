"""Fitting long chats into the budget: R11 and the `history` extension (error / fit / last).

`"fit"` drops whole blocks of at least half the room at points fixed by the history itself, so a
growing chat keeps the same start for several turns (the engine's prefix cache needs that).
"""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from prompt_formats import ContextLengthExceeded, PromptFormatError, get_format
from prompt_formats.history import drop_points

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


def exchange_tokens(fmt, tokenize, messages) -> list[int]:
    """Each earlier exchange's tokens where it follows another, as fitting counts them."""
    layout = fmt.layout(fmt.conversation(messages))
    return [len(tokenize("".join(pieces))) for pieces in layout.exchanges]


def room(fmt, tokenize, messages, budget: int) -> int:
    """The budget less the system part: what the history and the last message share."""
    return budget - len(tokenize(fmt.layout(fmt.conversation(messages)).system))


def test_fit_keeps_system_and_last_user_and_drops_a_block_of_the_oldest(fmt, neox_tokenize):
    messages = long_chat(30)
    budget = prompt_tokens(fmt, neox_tokenize, messages) * 9 // 10
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
    # It only had to drop a tenth, yet dropped at least half the room: the next turns fit too.
    sizes = exchange_tokens(fmt, neox_tokenize, messages)
    assert sum(sizes[:dropped_exchanges]) >= room(fmt, neox_tokenize, messages, budget) // 2
    # ... and no more than one block: one exchange fewer leaves less than half the room dropped.
    assert sum(sizes[: dropped_exchanges - 1]) < room(fmt, neox_tokenize, messages, budget) // 2


def test_fit_drops_at_fixed_points_so_a_growing_chat_keeps_its_start(fmt, neox_tokenize):
    """Turn after turn past the limit, the prompt starts the same until it outgrows the budget
    again: the engine's prefix cache then covers everything but the newest exchange."""
    budget = 1200
    chat = long_chat(60)
    turns_past_limit = 0
    start_changes = 0
    previous = None
    for exchanges in range(4, 61):
        messages = [*chat[: 1 + 2 * exchanges], {"role": "user", "content": f"Turn {exchanges}?"}]
        fitted = fmt.render_fitted(
            messages, tokenize=neox_tokenize, max_prompt_tokens=budget, history="fit"
        )
        assert len(fitted.token_ids) <= budget
        assert fitted.token_ids == neox_tokenize(fitted.prompt)
        if fitted.dropped_messages:
            turns_past_limit += 1
            # Everything but the new question (and the reply to the last one) was in the
            # previous prompt, character for character, unless the start moved.
            asked_before = previous.prompt[: previous.prompt.rindex("USER: ")]
            if not fitted.prompt.startswith(asked_before):
                start_changes += 1
        previous = fitted
    # An exchange here is about a twentieth of the budget: a block of half the room lasts
    # about nine turns. Dropping the fewest exchanges would move the start on every turn.
    assert turns_past_limit >= 30
    assert 1 <= start_changes <= turns_past_limit // 5


def test_drop_points_close_a_block_at_each_half_of_the_room():
    assert drop_points([10, 10, 10, 10, 10, 10, 10], room=40) == [2, 4, 6, 7]
    assert drop_points([30, 5, 25, 100, 1], room=60) == [1, 3, 4, 5]
    # Too little history for one block: every exchange is a point, fewest first.
    assert drop_points([3, 3, 3], room=100) == [1, 2, 3]
    assert drop_points([], room=100) == []


def test_fit_drops_the_fewest_when_the_history_is_too_short_for_a_block(fmt, neox_tokenize):
    """A huge last message, little history: every exchange is a drop point, fewest first."""
    messages = [*long_chat(6)[:-1], {"role": "user", "content": "Why? " * 600}]
    full = prompt_tokens(fmt, neox_tokenize, messages)
    budget = full - 30
    sizes = exchange_tokens(fmt, neox_tokenize, messages)
    assert sum(sizes) < room(fmt, neox_tokenize, messages, budget) // 2
    fitted = fmt.render_fitted(
        messages, tokenize=neox_tokenize, max_prompt_tokens=budget, history="fit"
    )
    dropped_exchanges = fitted.dropped_messages // 2
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
        full_prompt_calls += text.startswith(SYSTEM["content"]) and text.endswith("ASSISTANT: ")
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
def test_fit_takes_the_first_drop_point_that_fits_even_when_counts_do_not_add_up(fmt, count):
    """Estimates from pieces are off for such tokenizers; verification must still find the
    first drop point at which the prompt fits."""

    def tokenize(text: str) -> list[int]:
        return [7] * count(len(text))

    messages = long_chat(25)
    budget = prompt_tokens(fmt, tokenize, messages) * 2 // 3
    fitted = fmt.render_fitted(messages, tokenize=tokenize, max_prompt_tokens=budget, history="fit")
    dropped_exchanges = fitted.dropped_messages // 2
    assert fitted.prompt == fmt.render(without_oldest_exchanges(messages, dropped_exchanges))
    assert len(fitted.token_ids) <= budget
    sizes = exchange_tokens(fmt, tokenize, messages)
    points = drop_points(sizes, room(fmt, tokenize, messages, budget))
    assert dropped_exchanges in points
    earlier = [point for point in points if point < dropped_exchanges]
    if earlier:
        fewer = without_oldest_exchanges(messages, earlier[-1])
        assert prompt_tokens(fmt, tokenize, fewer) > budget
