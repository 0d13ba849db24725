"""What the server needs from a prompt format: the `PromptFormat` protocol.

The server codes against this protocol only, so a second model's format is one new module and
one `register_format` call; nothing about HTTP or the engine leaks in here, and nothing here
knows about them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from prompt_formats.history import FittedPrompt, HistoryPolicy
from prompt_formats.output import OutputShaper
from prompt_formats.token_cache import TokenCache
from prompt_formats.tools import Tool


@runtime_checkable
class PromptFormat(Protocol):
    """Messages → prompt text, plus the stops and output clean-up that go with that text."""

    name: str
    stop_strings: tuple[str, ...]

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        documents: Sequence[Mapping[str, Any]] | None = None,
        plainformat: bool = False,
        continue_final_message: bool = False,
        tools: Sequence[Tool] = (),
    ) -> str:
        """The prompt for `messages`; raises `PromptFormatError` on a client mistake."""
        ...

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
        """The prompt and its token ids within `max_prompt_tokens`, after the history policy."""
        ...

    def token_cache(self, tokenize: Callable[[str], list[int]]) -> TokenCache:
        """A `tokenize` for `render_fitted` caching ids per piece, checked once for `tokenize`."""
        ...

    def stops(self, client_stop: str | Sequence[str] | None) -> list[str]:
        """The format's stop strings united with the client's (R10)."""
        ...

    def output_shaper(self, *, continuation: bool = False) -> OutputShaper:
        """A fresh streaming output clean-up for one choice (R10)."""
        ...
