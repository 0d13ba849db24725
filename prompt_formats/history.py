"""Fitting a chat into the prompt budget: R11 and the `history` extension.

Policies:

- `"error"` (default): the whole chat or nothing; too long → `ContextLengthExceeded`.
- `"fit"`: drop the oldest user/assistant exchanges until the prompt fits, in whole blocks so
  that the next turns keep the same start (below).
- `"last"`: drop every earlier exchange (the model card CLI's `--no-history`).

The system part, the last user message and a `continue_final_message` prefill are never dropped,
and nothing is ever cut inside a message: if they alone do not fit, the request fails. A tool
call and its result are never parted: a drop that would leave a turn of tool results first (its
call dropped) is never made, so such a chat drops up to the exchange before the call instead.

**Why `"fit"` drops in blocks** *(ours)*. Dropping the fewest exchanges that make the prompt fit
looks kind, but a chat past the limit then loses its oldest exchange on every turn, so two
consecutive prompts share nothing after the system part and the engine's prefix cache never
hits: every turn prefills the whole context again (37 s a turn for SmolLM2 at 8,192 tokens on
CPU, against 1.2 s when the prefix is cached). So `"fit"` drops only at fixed *drop points*:
walking the exchanges from the oldest, a point closes a block each time the exchanges since the
previous point reach half the *room* (the budget less the system part's tokens). It drops to the
first point at which the prompt fits. A point depends only on the exchanges before it and on
the budget, never on what the chat adds later, so as the chat grows the chosen point stays put,
and the prompt keeps the very same start, until the prompt outgrows the budget again; then it
moves one block on and the prompt falls back to about half the room (a low-water mark). When the
exchanges after the last point are too few to close a block and that point does not fit either
(a huge last message), every exchange after it is a drop point, fewest first.

Why half: with a turn adding Δ tokens, a prompt kept between half the room and the budget
prefills about 2Δ tokens a turn on average (each drop re-prefills half the room, once every
room/2Δ turns), against the whole budget every turn before, while keeping three quarters of the
room of history on average and never less than half. A lower mark prefills less but forgets
more; a higher one re-prefills after fewer turns. llama.cpp's context shift makes the same
choice (it discards half of what it may discard). The points move when the budget moves (a
client changing `max_tokens`); they do not depend on the last user message.

Counting: the common case (the chat fits) costs one tokenization of the final prompt, which is
also what the engine receives, so the count is exact. Only a chat too long for `"fit"` costs
more: each exchange is counted on its own to place the drop points and estimate what dropping
saves, and the chosen prompt is counted in full to verify it, walking on where the estimate was
wrong (tokenizers whose counts do not add up piece by piece). With a `TokenCache` whose joins
are exact, all of this comes from cached ids.

When the prompt does not fit even after the policy, `ContextLengthExceeded.prompt_tokens` is the
size of the smallest prompt the policy allowed (for `"error"`, the whole prompt) *(ours)*: that is
the number the client has to bring under the limit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from prompt_formats.errors import ContextLengthExceeded, PromptFormatError
from prompt_formats.layout import PromptLayout
from prompt_formats.messages import Conversation
from prompt_formats.token_cache import PieceTokenizer

HistoryPolicy = Literal["error", "fit", "last"]
HISTORY_POLICIES: tuple[str, ...] = get_args(HistoryPolicy)

# A block of history dropped at once is at least this share of the room.
DROP_BLOCK_FRACTION = 0.5


@dataclass(frozen=True)
class FittedPrompt:
    """A prompt that fits its budget, its token ids, and how many client messages were dropped."""

    prompt: str
    token_ids: list[int]
    dropped_messages: int


def fit_conversation(
    conversation: Conversation,
    layout: PromptLayout,
    *,
    tokens: PieceTokenizer,
    max_prompt_tokens: int,
    history: HistoryPolicy = "error",
) -> FittedPrompt:
    """The prompt of `layout` (laid out from `conversation`) within `max_prompt_tokens`."""
    if history not in HISTORY_POLICIES:
        raise PromptFormatError(
            f"history must be one of {', '.join(HISTORY_POLICIES)}; got {history!r}.",
            param="history",
            code="invalid_history",
        )

    def measure(drop: int) -> FittedPrompt:
        pieces = layout.pieces(drop)
        dropped = conversation.dropped_messages(drop)
        return FittedPrompt("".join(pieces), tokens.ids(pieces), dropped)

    whole = measure(0)
    if len(whole.token_ids) <= max_prompt_tokens:
        return whole
    total = len(layout.exchanges)
    allowed = [drop for drop in range(1, total + 1) if conversation.keeps_results_with_calls(drop)]
    if history == "error" or not allowed:
        raise ContextLengthExceeded(
            prompt_tokens=len(whole.token_ids), max_prompt_tokens=max_prompt_tokens
        )
    if history == "last":
        return _first_fitting([allowed[-1]], measure, lambda drop: 0, max_prompt_tokens)

    sizes = [tokens.count(exchange) for exchange in layout.exchanges]
    room = max_prompt_tokens - tokens.count([layout.system])
    saved = [0]
    for size in sizes:
        saved.append(saved[-1] + size)
    keep = set(allowed)
    points = [drop for drop in drop_points(sizes, room) if drop in keep]
    if points[-1:] != allowed[-1:]:
        points.append(allowed[-1])
    return _first_fitting(
        points,
        measure,
        lambda drop: len(whole.token_ids) - saved[drop],
        max_prompt_tokens,
    )


def drop_points(exchange_tokens: Sequence[int], room: int) -> list[int]:
    """How many oldest exchanges `"fit"` may drop, ascending, ending with all of them.

    A point closes a block once the exchanges since the previous one hold at least
    `DROP_BLOCK_FRACTION` of `room` tokens; after the last closed block, every exchange.
    """
    block = max(1, int(room * DROP_BLOCK_FRACTION))
    points: list[int] = []
    filled = 0
    for index, size in enumerate(exchange_tokens):
        filled += size
        if filled >= block:
            points.append(index + 1)
            filled = 0
    last_block_end = points[-1] if points else 0
    return points + list(range(last_block_end + 1, len(exchange_tokens) + 1))


def _first_fitting(
    points: list[int],
    measure: Callable[[int], FittedPrompt],
    estimate: Callable[[int], int],
    budget: int,
) -> FittedPrompt:
    """The prompt at the first of `points` that fits, measuring as few prompts as it can.

    Starts at the first point whose estimate fits and verifies it; walks on while the measured
    prompt is too long, and back while an inexact estimate may have skipped a point that fits.
    """
    index = next((i for i, drop in enumerate(points) if estimate(drop) <= budget), len(points) - 1)
    fitted = measure(points[index])
    if len(fitted.token_ids) > budget:
        while len(fitted.token_ids) > budget:
            if index == len(points) - 1:
                raise ContextLengthExceeded(
                    prompt_tokens=len(fitted.token_ids), max_prompt_tokens=budget
                )
            index += 1
            fitted = measure(points[index])
        return fitted
    if len(fitted.token_ids) != estimate(points[index]):
        while index > 0:
            fewer = measure(points[index - 1])
            if len(fewer.token_ids) > budget:
                break
            fitted, index = fewer, index - 1
    return fitted
