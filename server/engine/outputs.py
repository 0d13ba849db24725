"""What the server reads from vLLM's engine outputs, as `typing.Protocol`s.

`Engine.stream` yields vLLM's own `RequestOutput` objects, unconverted: these protocols only
name the fields `generation/` and `api/` read, so the seam is typed at no cost per token (a
protocol is erased at run time; nothing is copied or wrapped). vLLM's `RequestOutput`,
`CompletionOutput` and `Logprob` match them structurally; `tests/engine/test_seam.py` checks
that the fields exist on vLLM's classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol


class TokenLogprob(Protocol):
    """One candidate token's log probability (vLLM's `Logprob`)."""

    @property
    def logprob(self) -> float: ...

    @property
    def decoded_token(self) -> str | None: ...


# Per position: each candidate token id and its logprob (vLLM's `SampleLogprobs` entries).
TokenCandidates = Mapping[int, TokenLogprob]


class EngineCompletion(Protocol):
    """One sampled choice of an engine request, so far (vLLM's `CompletionOutput`)."""

    @property
    def index(self) -> int: ...

    @property
    def text(self) -> str: ...

    @property
    def token_ids(self) -> Sequence[int]: ...

    @property
    def logprobs(self) -> Sequence[TokenCandidates] | None: ...

    @property
    def finish_reason(self) -> str | None: ...

    # The stop string (str) or stop token id (int) that ended the choice; None for EOS or length.
    @property
    def stop_reason(self) -> int | str | None: ...


class EngineOutput(Protocol):
    """One step of an engine request (vLLM's `RequestOutput`)."""

    @property
    def outputs(self) -> Sequence[EngineCompletion]: ...

    @property
    def finished(self) -> bool: ...

    @property
    def prompt_token_ids(self) -> Sequence[int] | None: ...

    # The prompt's first token has no logprob (None).
    @property
    def prompt_logprobs(self) -> Sequence[TokenCandidates | None] | None: ...

    @property
    def num_cached_tokens(self) -> int | None: ...
