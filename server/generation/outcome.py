"""Per-request bookkeeping: deadline, timings and tokens, for metrics, usage and the access log.

Histograms are observed once per request (`finish`), counters once per choice; nothing here runs
per token except the two integer additions the generation path makes itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from server.engine import EngineOutput
from server.metrics import Metrics


def classify_stop(finish_reason: str | None, stop_reason: int | str | None, format_stops: tuple[str, ...] = ()) -> str:
    """Why a choice ended, in the metric's words: eos, a format stop string (`</s>`, `USER:`),
    client_stop, stop_token, length, abort."""
    if finish_reason == "length":
        return "length"
    if finish_reason == "abort":
        return "abort"
    if isinstance(stop_reason, str):
        return stop_reason if stop_reason in format_stops else "client_stop"
    if isinstance(stop_reason, int):
        return "stop_token"
    return "eos"


@dataclass
class Outcome:
    route: str
    request_id: str
    metrics: Metrics
    deadline: float
    arrival: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Prompt tokens the engine found in its prefix cache, and those it wrote to it (vLLM's
    # `num_cached_tokens` / `num_cache_creation_tokens`), summed over the request's prompts.
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    # The prompt token ids the engine reports for each engine request (for `--log-prompts`).
    engine_prompt_token_ids: list[list[int]] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)

    def mark_first_token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
            self.metrics.time_to_first_token.labels(self.route).observe(self.first_token_at - self.arrival)

    def record_choice(self, finish_reason: str | None, stop_kind: str) -> None:
        self.mark_first_token()
        self.finish_reasons.append(finish_reason or "none")
        self.metrics.finish_reasons.labels(self.route, finish_reason or "none").inc()
        self.metrics.stop_reasons.labels(stop_kind).inc()

    def record_tool_calls(self, tool_choice: str, count: int) -> None:
        if count:
            self.metrics.tool_calls.labels(tool_choice).inc(count)

    def record_prefill(self, output: EngineOutput) -> None:
        """The prefix-cache counts of one engine request, from its first `RequestOutput`."""
        self.cached_tokens += output.num_cached_tokens or 0
        self.cache_write_tokens += getattr(output, "num_cache_creation_tokens", None) or 0
        # A reference, not a copy: read only when `--log-prompts` logs it.
        self.engine_prompt_token_ids.append(getattr(output, "prompt_token_ids", None) or [])

    def record_tokens(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens

    def usage(self) -> dict[str, Any]:
        """Chat and completions `usage`, so far (the driver counts tokens as they arrive)."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens, "cache_write_tokens": self.cache_write_tokens},
        }

    def finish(self) -> None:
        """Observe the request's latency histograms and token counters once it is over."""
        now = time.monotonic()
        self.metrics.request_latency.labels(self.route).observe(now - self.arrival)
        self.metrics.prompt_tokens.labels(self.route).inc(self.prompt_tokens)
        self.metrics.completion_tokens.labels(self.route).inc(self.completion_tokens)
        self.metrics.cached_prompt_tokens.labels(self.route).inc(self.cached_tokens)
        if self.first_token_at is not None and self.completion_tokens > 1:
            per_token = (now - self.first_token_at) / (self.completion_tokens - 1)
            self.metrics.time_per_output_token.labels(self.route).observe(per_token)

    def timings(self) -> dict[str, float | None]:
        now = time.monotonic()
        ttft = None if self.first_token_at is None else round(self.first_token_at - self.arrival, 4)
        return {"latency_s": round(now - self.arrival, 4), "ttft_s": ttft}
