"""What a route hands to the generation path: the engine prompts and how to shape their output."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prompt_formats import OutputShaper

if TYPE_CHECKING:  # vLLM's type, named through the engine package (which alone imports vLLM)
    from server.engine.sampling import SamplingParams


@dataclass(frozen=True)
class EnginePrompt:
    """One engine request: prompt token ids (and text, for the engine's logs), sampling."""

    token_ids: list[int]
    text: str | None
    params: SamplingParams  # built by server.engine.sampling from typed `SamplingArgs`


@dataclass(frozen=True)
class PreparedGeneration:
    """A validated request, ready for the engine: nothing after this is the client's mistake.

    `prompts` holds one engine request per prompt (chat and responses: one; completions: one per
    prompt), each sampled `n` times; choice `i` of prompt `p` is choice `p * n + i`, as OpenAI
    numbers them. `shaper` makes a fresh output clean-up per choice (the prompt format's R10);
    None passes the engine's text through untouched (completions). `stop_strings` are the
    format's own stops, so a stop can be told apart from a client's in the metrics.
    """

    prompts: list[EnginePrompt]
    n: int = 1
    shaper: Callable[[], OutputShaper] | None = None
    stop_strings: tuple[str, ...] = ()
    # Chat messages the history policy left out of the prompt (counted in the metrics).
    dropped_messages: int = 0
    # Extra response headers (e.g. that same count, for the client).
    headers: dict[str, str] = field(default_factory=dict)
    # The output is a tool answer held to the tools' schema under this `tool_choice` mode (auto,
    # required, named): the encoders read calls from it. None: text.
    tool_choice: str | None = None

    @property
    def prompt_tokens(self) -> int:
        return sum(len(prompt.token_ids) for prompt in self.prompts)

    @property
    def choices(self) -> int:
        return len(self.prompts) * self.n
