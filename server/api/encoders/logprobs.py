"""vLLM's per-token logprob dictionaries → OpenAI's chat and completions shapes."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from server.engine import TokenCandidates, TokenLogprob

TokenText = Callable[[int], str]


def _finite(value: float) -> float:
    # JSON has no -inf; OpenAI clients expect a number.
    return value if math.isfinite(value) else -9999.0


def _text(token_id: int, entry: TokenLogprob | None, token_text: TokenText, as_ids: bool) -> str:
    if as_ids:
        return f"token_id:{token_id}"
    decoded = getattr(entry, "decoded_token", None)
    return decoded if decoded is not None else token_text(token_id)


def _ranked(candidates: TokenCandidates, limit: int) -> list[tuple[int, TokenLogprob]]:
    ordered = sorted(candidates.items(), key=lambda item: item[1].logprob, reverse=True)
    return ordered[:limit]


def chat_logprob_content(
    token_ids: Sequence[int],
    logprobs: Sequence[TokenCandidates] | None,
    top_n: int,
    token_text: TokenText,
) -> list[dict[str, Any]]:
    content = []
    for token_id, candidates in zip(token_ids, logprobs or ()):
        entry = candidates.get(token_id)
        text = _text(token_id, entry, token_text, False)
        content.append(
            {
                "token": text,
                "logprob": _finite(entry.logprob) if entry is not None else -9999.0,
                "bytes": list(text.encode("utf-8")),
                "top_logprobs": [
                    {
                        "token": (alt := _text(alt_id, alt_entry, token_text, False)),
                        "logprob": _finite(alt_entry.logprob),
                        "bytes": list(alt.encode("utf-8")),
                    }
                    for alt_id, alt_entry in _ranked(candidates, top_n)
                ],
            }
        )
    return content


class CompletionLogprobs:
    """Accumulates OpenAI completions `logprobs` ({tokens, token_logprobs, top_logprobs, text_offset})."""

    def __init__(self, top_n: int, token_text: TokenText, as_ids: bool, text_offset: int = 0) -> None:
        self.top_n = top_n
        self.token_text = token_text
        self.as_ids = as_ids
        self.offset = text_offset
        self.tokens: list[str] = []
        self.token_logprobs: list[float | None] = []
        self.top_logprobs: list[dict[str, float] | None] = []
        self.text_offset: list[int] = []

    def add(self, token_ids: Sequence[int], logprobs: Sequence[TokenCandidates | None] | None) -> None:
        for token_id, candidates in zip(token_ids, logprobs or ()):
            if candidates is None:
                # The first prompt token has no logprob (nothing precedes it).
                text = self.token_text(token_id) if not self.as_ids else f"token_id:{token_id}"
                self._append(text, None, None)
                continue
            entry = candidates.get(token_id)
            text = _text(token_id, entry, self.token_text, self.as_ids)
            top = {
                _text(alt_id, alt_entry, self.token_text, self.as_ids): _finite(alt_entry.logprob)
                for alt_id, alt_entry in _ranked(candidates, self.top_n)
            }
            self._append(text, _finite(entry.logprob) if entry is not None else None, top)

    def _append(self, text: str, logprob: float | None, top: dict[str, float] | None) -> None:
        self.tokens.append(text)
        self.token_logprobs.append(logprob)
        self.top_logprobs.append(top)
        self.text_offset.append(self.offset)
        if not self.as_ids:
            self.offset += len(text)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "token_logprobs": self.token_logprobs,
            "top_logprobs": self.top_logprobs,
            "text_offset": self.text_offset,
        }

    def take(self) -> dict[str, Any]:
        """The part added since the last take (for stream chunks)."""
        part = self.as_dict()
        self.tokens, self.token_logprobs, self.top_logprobs, self.text_offset = [], [], [], []
        return part
