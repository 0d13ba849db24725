"""The benchmark's load: a bounded closed loop of identical streaming chat requests, and its statistics.

`run_level` keeps `concurrency` requests in flight until `requests` have been sent, over one
keep-alive httpx client, with the tests' one load generator (`harness/streams.py`), which
times every request on the client side:

- TTFT: request sent → first SSE chunk with non-empty content (a role-only chunk or a
  `: keep-alive` comment does not count: our server sends those before the engine answers,
  vLLM's does not);
- ITL: the gaps between consecutive content chunks, pooled over all requests;
- TPOT: per request, (last content chunk − first) / (completion tokens − 1);
- end-to-end: sent → `data: [DONE]`.

Every loop is bounded: a fixed request count, a per-request timeout, and a wall-clock limit for
the level after which no new request starts and the rest are cancelled. Loopback only.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import time
from typing import Any
from urllib.parse import urlsplit

import httpx

from harness.streams import StreamRecord, closed_loop, read_stream

STOP_STRINGS = ["</s>", "USER:"]  # what our server always adds (R10); vLLM is sent the same


def check_loopback(url: str) -> None:
    """The benchmark drives only servers on this machine."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"{url}: the benchmark only sends traffic to loopback addresses")


def chat_body(model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    """One request, identical for both servers: greedy, fixed length, streamed, usage at the end."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "stop": STOP_STRINGS,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def run_level(
    base_url: str,
    *,
    model: str,
    prompts: list[str],
    concurrency: int,
    requests: int,
    max_tokens: int,
    time_limit_s: float,
    request_timeout_s: float = 300.0,
) -> tuple[list[StreamRecord], float]:
    """`requests` streaming chats, `concurrency` at a time; returns the records and the wall time."""
    check_loopback(base_url)
    deadline = time.monotonic() + time_limit_s
    records: list[StreamRecord] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=base_url, limits=limits, trust_env=False, timeout=request_timeout_s) as client:

        async def one(index: int) -> None:
            body = chat_body(model, prompts[index % len(prompts)], max_tokens)
            left = max(1.0, min(request_timeout_s, deadline - time.monotonic()))
            record = StreamRecord()
            try:
                await asyncio.wait_for(read_stream(client, "/v1/chat/completions", body, record), left)
            except asyncio.TimeoutError:
                record.error = f"TimeoutError: no end in {left:.0f} s"
            records.append(record)

        try:
            wall = await closed_loop(one, concurrency=concurrency, max_requests=requests, time_limit_s=time_limit_s)
        except asyncio.TimeoutError:
            records.append(StreamRecord(error="level time limit reached"))
            wall = time.monotonic() - (deadline - time_limit_s)
    return records, wall


# --- statistics --------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(records: list[StreamRecord], wall_s: float, max_tokens: int) -> dict[str, Any]:
    """Client-side figures for one run (or several runs' records pooled, with their summed wall)."""
    good = [r for r in records if r.ok]
    tokens = sum(r.completion_tokens for r in good)
    gaps = [gap for r in good for gap in r.gaps_s]
    ms = 1000.0

    def pct(values: list[float], q: float, scale: float = ms) -> float | None:
        value = percentile(values, q)
        return None if value is None else value * scale

    ttft = [r.ttft_s for r in good if r.ttft_s is not None]
    tpot = [r.tpot_s for r in good if r.tpot_s is not None]
    e2e = [r.e2e_s for r in good if r.e2e_s is not None]
    return {
        "requests_ok": len(good),
        "requests_failed": len(records) - len(good),
        "errors": sorted({r.error for r in records if r.error})[:5],
        "output_tokens": tokens,
        "short_responses": sum(1 for r in good if r.completion_tokens != max_tokens),
        "content_chunks": sum(r.content_chunks for r in good),
        # Above 1 when the engine's DELTA outputs were merged because the consumer lagged: ITL
        # is then per chunk, and TPOT (per token) is the fairer latency.
        "tokens_per_chunk": tokens / chunks if (chunks := sum(r.content_chunks for r in good)) else None,
        "wall_s": wall_s,
        "output_tokens_per_s": tokens / wall_s if wall_s > 0 else None,
        "requests_per_s": len(good) / wall_s if wall_s > 0 else None,
        "ttft_ms_p50": pct(ttft, 50),
        "ttft_ms_p95": pct(ttft, 95),
        "itl_ms_p50": pct(gaps, 50),
        "itl_ms_p95": pct(gaps, 95),
        "tpot_ms_p50": pct(tpot, 50),
        "tpot_ms_p95": pct(tpot, 95),
        # Seconds streams were open, summed: what per-stream costs (timers, keep-alives,
        # disconnect watchers) scale with, apart from tokens.
        "stream_s": sum(e2e),
        "e2e_s_p50": pct(e2e, 50, 1.0),
        "e2e_s_p95": pct(e2e, 95, 1.0),
    }
