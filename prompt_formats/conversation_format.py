"""What every format that lays out a validated conversation shares: the `PromptFormat` methods.

A format here is its name, its stops, its default system text, its output clean-up and one
method, `layout`, that turns a validated `Conversation` into the pieces of its prompt. Message
validation (R4-R7), the extensions (documents, PLAINFORMAT), history fitting (R11) and the token
cache are the same for every such format, so they live once, here.
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
from prompt_formats.tools import Tool, render_tools
from prompt_formats.token_cache import (
    DEFAULT_MAX_BYTES,
    TokenCache,
    WholeTokenizer,
    probe_conversations,
)

PLAINFORMAT = "PLAINFORMAT"


class ConversationFormat:
    """A `PromptFormat` whose subclasses say only how a conversation is laid out."""

    name: str
    stop_strings: tuple[str, ...]
    # Turn headers the model may start writing when it hits the token limit (output.py).
    output_headers: tuple[str, ...] = ()

    def __init__(self, default_system: str):
        self.default_system = default_system

    def layout(self, conversation: Conversation) -> PromptLayout:
        raise NotImplementedError

    def conversation(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        documents: Sequence[Mapping[str, Any]] | None = None,
        plainformat: bool = False,
        continue_final_message: bool = False,
        tools: Sequence[Tool] = (),
    ) -> Conversation:
        """Validated messages with the extensions applied to the last user message (R12), and
        the tools (`tools.render_tools`) after the system text and a blank line."""
        conversation = parse_messages(messages, continue_final_message=continue_final_message)
        if tools:
            system = self.default_system if conversation.system is None else conversation.system
            conversation = conversation.with_system("\n\n".join(filter(None, (system, render_tools(tools)))))
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
        tools: Sequence[Tool] = (),
    ) -> str:
        return self.render_conversation(
            self.conversation(
                messages,
                documents=documents,
                plainformat=plainformat,
                continue_final_message=continue_final_message,
                tools=tools,
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
        tools: Sequence[Tool] = (),
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
            tools=tools,
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

    def stops(self, client_stop: str | Sequence[str] | None) -> list[str]:
        return merge_stops(self.stop_strings, client_stop)

    def output_shaper(self, *, continuation: bool = False) -> OutputShaper:
        return OutputShaper(continuation=continuation, headers=self.output_headers)


def _with_plainformat(text: str) -> str:
    words = text.rsplit(maxsplit=1)
    if words and words[-1] == PLAINFORMAT:
        return text
    return f"{text} {PLAINFORMAT}" if text else PLAINFORMAT
