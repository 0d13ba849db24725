"""Fitting a chat into the prompt budget: R11 and the `history` extension.

Policies:

- `"error"` (default): the whole chat or nothing; too long → `ContextLengthExceeded`.
- `"fit"`: drop the oldest user/assistant exchanges, fewest first, until the prompt fits.
- `"last"`: drop every earlier exchange (the model card CLI's `--no-history`).

The system part, the last user message and a `continue_final_message` prefill are never dropped,
and nothing is ever cut inside a message: if they alone do not fit, the request fails.

Why it is built this way: the common case (the chat fits) must cost one render and one
tokenizer call on the final prompt, which is also what the engine receives, so the count is
exact. Only when a chat is too long under `"fit"` is more work done, and even then not one full
tokenization per dropped exchange: each exchange is tokenized once on its own to estimate what
dropping it saves, the estimate picks how many to drop, and one full call verifies it. For
byte-level BPE tokenizers (GPT-NeoX) the estimate is exact, because the prompt formats cut
exchanges where the pre-tokenizer splits anyway; for others the verification walks to the right
answer, one full call per step.

When the prompt does not fit even after the policy, `ContextLengthExceeded.prompt_tokens` is the
size of the smallest prompt the policy allowed (for `"error"`, the whole prompt) *(ours)*: that is
the number the client has to bring under the limit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

from prompt_formats.errors import ContextLengthExceeded, PromptFormatError
from prompt_formats.messages import Conversation, Exchange

HistoryPolicy = Literal["error", "fit", "last"]
HISTORY_POLICIES: tuple[str, ...] = get_args(HistoryPolicy)

Tokenize = Callable[[str], list[int]]
Render = Callable[[Conversation], str]


@dataclass(frozen=True)
class FittedPrompt:
    """A prompt that fits its budget, its token ids, and how many client messages were dropped."""

    prompt: str
    token_ids: list[int]
    dropped_messages: int


def fit_conversation(
    conversation: Conversation,
    *,
    render: Render,
    exchange_text: Callable[[Exchange], str],
    tokenize: Tokenize,
    max_prompt_tokens: int,
    history: HistoryPolicy = "error",
) -> FittedPrompt:
    """Render `conversation` within `max_prompt_tokens` under the `history` policy.

    `render` turns a conversation into the prompt; `exchange_text` gives the text one exchange
    adds to it when it is not the first (the piece whose tokens dropping it saves).
    """
    if history not in HISTORY_POLICIES:
        raise PromptFormatError(
            f"history must be one of {', '.join(HISTORY_POLICIES)}; got {history!r}.",
            param="history",
            code="invalid_history",
        )

    prompt = render(conversation)
    ids = list(tokenize(prompt))
    if len(ids) <= max_prompt_tokens:
        return FittedPrompt(prompt, ids, 0)
    total = len(conversation.exchanges)
    if history == "error" or total == 0:
        raise ContextLengthExceeded(prompt_tokens=len(ids), max_prompt_tokens=max_prompt_tokens)

    if history == "last":
        return _fit_dropping(conversation, total, render, tokenize, max_prompt_tokens)

    # "fit": estimate the fewest exchanges to drop from each exchange's own token count.
    excess = len(ids) - max_prompt_tokens
    saved = 0
    drop = 0
    while drop < total and saved < excess:
        saved += len(tokenize(exchange_text(conversation.exchanges[drop])))
        drop += 1
    estimate = len(ids) - saved
    fitted = _try(conversation, drop, render, tokenize)
    if len(fitted.token_ids) > max_prompt_tokens:
        if drop == total:
            raise ContextLengthExceeded(
                prompt_tokens=len(fitted.token_ids), max_prompt_tokens=max_prompt_tokens
            )
        return _fit_dropping(conversation, drop + 1, render, tokenize, max_prompt_tokens)
    if len(fitted.token_ids) != estimate:
        # The tokenizer does not add up piece by piece: check that fewer drops do not fit too.
        while drop > 1:
            fewer = _try(conversation, drop - 1, render, tokenize)
            if len(fewer.token_ids) > max_prompt_tokens:
                break
            fitted, drop = fewer, drop - 1
    return fitted


def _try(
    conversation: Conversation, drop: int, render: Render, tokenize: Tokenize
) -> FittedPrompt:
    prompt = render(conversation.without_oldest(drop))
    return FittedPrompt(prompt, list(tokenize(prompt)), conversation.dropped_messages(drop))


def _fit_dropping(
    conversation: Conversation,
    drop: int,
    render: Render,
    tokenize: Tokenize,
    max_prompt_tokens: int,
) -> FittedPrompt:
    """Drop `drop` exchanges, then one more at a time until the prompt fits or none are left."""
    while True:
        fitted = _try(conversation, drop, render, tokenize)
        if len(fitted.token_ids) <= max_prompt_tokens:
            return fitted
        if drop >= len(conversation.exchanges):
            raise ContextLengthExceeded(
                prompt_tokens=len(fitted.token_ids), max_prompt_tokens=max_prompt_tokens
            )
        drop += 1
