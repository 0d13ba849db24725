"""The airoboros-mpt-30b prompt, exactly as the model was trained on it (spec/prompt-format.md).

    "{system} USER: {user} ASSISTANT: {reply}</s>USER: {user} ASSISTANT: "

The model has no chat template; this module is that template. Message validation lives in
`messages.py`, the closed-context layout in `documents.py`, history fitting in `history.py`,
per-piece token ids in `token_cache.py` and output clean-up in `output.py`; this module only lays
out the text (R1-R3, R8, R12), as the pieces of a `PromptLayout`, and wires those together.

Why the pieces look the way they do: `</s>` is plain text for this tokenizer (R3), and the
trailing space after `ASSISTANT:` is what training had (R2). An empty system text keeps its
separator, so the prompt starts with ` USER:` as in training (R8). The prompt is rendered
without a BOS; the server's `add_bos` setting prepends it to the ids (R9) and must then pass a
`max_prompt_tokens` one lower.

Choices the spec leaves open, marked *(ours)*:

- `plainformat` with a last user message whose last word already is `PLAINFORMAT` adds nothing
  *(ours)*: a doubled keyword is not what the model was trained on.
- With both `plainformat` and `documents`, ` PLAINFORMAT` goes on the user's text, which then
  becomes the instruction block *(ours)*: the keyword belongs to the instruction.
- A prefill (`continue_final_message`) follows `ASSISTANT: ` directly and is stripped on the left
  only (see `messages.py`); stream its continuation through `output_shaper(continuation=True)`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prompt_formats.documents import parse_documents, render_closed_context
from prompt_formats.history import FittedPrompt, HistoryPolicy, fit_conversation
from prompt_formats.layout import PromptLayout
from prompt_formats.messages import Conversation, parse_messages
from prompt_formats.output import OutputShaper
from prompt_formats.stops import merge_stops
from prompt_formats.token_cache import (
    DEFAULT_MAX_BYTES,
    TokenCache,
    WholeTokenizer,
    probe_conversations,
)

DEFAULT_SYSTEM = (
    "A chat between a curious user and an assistant. The assistant gives helpful, detailed, "
    "accurate, uncensored responses to the user's input."
)
END_OF_REPLY = "</s>"
PLAINFORMAT = "PLAINFORMAT"


class AiroborosFormat:
    """The default prompt format of the server (`PromptFormat` protocol)."""

    name = "airoboros"
    stop_strings: tuple[str, ...] = (END_OF_REPLY, "USER:")

    def __init__(self, default_system: str = DEFAULT_SYSTEM):
        self.default_system = default_system

    def conversation(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        documents: Sequence[Mapping[str, Any]] | None = None,
        plainformat: bool = False,
        continue_final_message: bool = False,
    ) -> Conversation:
        """Validated messages with the extensions applied to the last user message (R12)."""
        conversation = parse_messages(messages, continue_final_message=continue_final_message)
        text = conversation.last_user.text
        if plainformat:
            text = _with_plainformat(text)
        if documents is not None:
            parsed = parse_documents(documents)
            if parsed:
                text = render_closed_context(parsed, text)
        return conversation.with_last_user_text(text)

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        documents: Sequence[Mapping[str, Any]] | None = None,
        plainformat: bool = False,
        continue_final_message: bool = False,
    ) -> str:
        return self.render_conversation(
            self.conversation(
                messages,
                documents=documents,
                plainformat=plainformat,
                continue_final_message=continue_final_message,
            )
        )

    def render_fitted(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tokenize: Callable[[str], list[int]],
        max_prompt_tokens: int,
        history: HistoryPolicy = "error",
        documents: Sequence[Mapping[str, Any]] | None = None,
        plainformat: bool = False,
        continue_final_message: bool = False,
    ) -> FittedPrompt:
        """Render, tokenize the whole prompt once, and apply `history` if it is too long (R11).

        `tokenize` must add no special tokens. A `TokenCache` from `self.token_cache()` gives the
        same ids from cached pieces. Raises `ContextLengthExceeded` when the prompt does not fit
        even after the policy.
        """
        conversation = self.conversation(
            messages,
            documents=documents,
            plainformat=plainformat,
            continue_final_message=continue_final_message,
        )
        own_cache = isinstance(tokenize, TokenCache) and tokenize.checked_for == self.name
        return fit_conversation(
            conversation,
            self.layout(conversation),
            tokens=tokenize if own_cache else WholeTokenizer(tokenize),
            max_prompt_tokens=max_prompt_tokens,
            history=history,
        )

    def token_cache(
        self, tokenize: Callable[[str], list[int]], *, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> TokenCache:
        """A caching `tokenize` for this format's prompts, its joins checked on `tokenize` now."""
        probes = [
            self.layout(conversation).pieces(drop)
            for conversation in probe_conversations()
            for drop in range(len(conversation.exchanges) + 1)
        ]
        return TokenCache(tokenize, probes=probes, checked_for=self.name, max_bytes=max_bytes)

    def render_conversation(self, conversation: Conversation) -> str:
        return self.layout(conversation).prompt()

    def layout(self, conversation: Conversation) -> PromptLayout:
        """The prompt as pieces: a user message, a reply with its `</s>`, the assistant's head.

        Each boundary is followed by `USER: `, ` USER: ` or ` ASSISTANT: `, which byte-level BPE
        splits before whatever comes first, so the pieces tokenize on their own as they do in
        place (see `layout.py`); an empty user message (`USER: ` ends in a space) stays joined
        to what follows it.
        """
        system = self.default_system if conversation.system is None else conversation.system
        exchanges = tuple(
            _turn_pieces(exchange.user.text, f" ASSISTANT: {exchange.assistant.text}{END_OF_REPLY}")
            for exchange in conversation.exchanges
        )
        prefill = conversation.prefill.text if conversation.prefill is not None else ""
        final = _turn_pieces(conversation.last_user.text, f" ASSISTANT: {prefill}")
        return PromptLayout(system, exchanges, final, opening=" ")

    def stops(self, client_stop: str | Sequence[str] | None) -> list[str]:
        return merge_stops(self.stop_strings, client_stop)

    def output_shaper(self, *, continuation: bool = False) -> OutputShaper:
        return OutputShaper(continuation=continuation)


def _turn_pieces(user_text: str, assistant_part: str) -> tuple[str, ...]:
    if not user_text:
        return (f"USER: {assistant_part}",)
    return (f"USER: {user_text}", assistant_part)


def _with_plainformat(text: str) -> str:
    words = text.rsplit(maxsplit=1)
    if words and words[-1] == PLAINFORMAT:
        return text
    return f"{text} {PLAINFORMAT}" if text else PLAINFORMAT
