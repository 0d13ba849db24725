"""The one load generator: a streaming request read and timed, and a bounded closed loop of them.

`read_stream` sends one streaming request and records what came back, line by line: status,
when the headers and each content chunk arrived (TTFT, the gaps between chunks), finish reasons,
usage, an error event, `data: [DONE]`, and the balancer's `X-Upstream` header. `closed_loop`
keeps `concurrency` requests in flight until `max_requests` were sent, its time limit passed, or
`stop` is set. The soak (`harness/load.py`), the load-balancer tests and the benchmark
(`bench/load.py`) all drive their load with these two.

Every loop is bounded: a request count, a wall-clock limit after which no request starts and
the rest are cancelled, and each request's own timeout (the caller's client). Loopback only:
the callers build their clients for loopback URLs.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from harness.sse import SSEEvent, parse_sse_line


@dataclass
class StreamRecord:
    """One streaming request as its client saw it (times on `time.monotonic()`).

    Plain data (it crosses processes as a dict: `bench/direct.py`)."""

    started: float = field(default_factory=time.monotonic)
    ok: bool = False  # 200, a finish reason, [DONE], and no error event
    status: int | None = None
    error: str | None = None
    headers_at: float | None = None
    upstreams: list[str] = field(default_factory=list)  # X-Upstream: every replica a balancer tried
    finish_reasons: list[str] = field(default_factory=list)
    saw_done: bool = False
    ended: float | None = None
    ttft_s: float | None = None  # sent → first chunk with content (not the role chunk, not a comment)
    e2e_s: float | None = None
    completion_tokens: int = 0
    prompt_tokens: int = 0
    content_chunks: int = 0
    first_content: float | None = None
    last_content: float | None = None
    gaps_s: list[float] = field(default_factory=list)

    @property
    def tpot_s(self) -> float | None:
        if self.first_content is None or self.last_content is None or self.completion_tokens < 2:
            return None
        return (self.last_content - self.first_content) / (self.completion_tokens - 1)

    @property
    def kind(self) -> str:
        """ok, failed (no answer: a connection error or an error status) or truncated (the
        stream started but did not reach its end)."""
        if self.status != 200:
            return "failed"
        return "ok" if self.ok else "truncated"

    @property
    def replica(self) -> str | None:
        """The replica that answered (the last one a balancer tried)."""
        return self.upstreams[-1] if self.upstreams else None

    def note_content(self, now: float | None = None) -> None:
        """A chunk with content arrived: the first sets TTFT, later ones add an inter-chunk gap."""
        now = time.monotonic() if now is None else now
        self.content_chunks += 1
        if self.last_content is None:
            self.first_content = now
            self.ttft_s = now - self.started
        else:
            self.gaps_s.append(now - self.last_content)
        self.last_content = now

    def note_event(self, event: SSEEvent) -> None:
        if event.data is None:
            return
        if event.is_done:
            self.saw_done = True
            return
        chunk = event.json()
        if "error" in chunk:
            self.error = f"error event: {json.dumps(chunk['error'])[:300]}"
            return
        usage = chunk.get("usage")
        if usage:
            self.completion_tokens = usage.get("completion_tokens") or 0
            self.prompt_tokens = usage.get("prompt_tokens") or 0
        if event.content:
            self.note_content(event.at)
        self.finish_reasons += [c["finish_reason"] for c in chunk.get("choices") or () if c.get("finish_reason")]

    def finish(self) -> None:
        self.ended = time.monotonic()
        self.e2e_s = self.ended - self.started
        self.ok = self.status == 200 and self.saw_done and self.error is None and bool(self.finish_reasons)
        if self.ok and not self.completion_tokens:
            self.completion_tokens = self.content_chunks  # a stream without include_usage


async def read_stream(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    record: StreamRecord | None = None,
    *,
    events: list[SSEEvent] | None = None,
    leave_after_content: bool = False,
) -> StreamRecord:
    """Send one streaming request and read it to its end (or, with `leave_after_content`, hang
    up at the first content). `record` is filled in as it goes, so others can watch it;
    `events` collects every SSE line of interest."""
    record = record or StreamRecord()
    try:
        async with client.stream("POST", url, json=body) as response:
            record.status = response.status_code
            record.headers_at = time.monotonic()
            record.upstreams = [
                part.strip() for part in response.headers.get("x-upstream", "").split(",") if part.strip()
            ]
            if response.status_code != 200:
                record.error = f"HTTP {response.status_code}: {(await response.aread()).decode(errors='replace')[:300]}"
                return record
            async for line in response.aiter_lines():
                event = parse_sse_line(line)
                if event is None:
                    continue
                if events is not None:
                    events.append(event)
                record.note_event(event)
                if leave_after_content and event.content:
                    record.error = "left"  # closing the response drops the connection
                    return record
    except (httpx.HTTPError, json.JSONDecodeError) as error:
        record.error = f"{type(error).__name__}: {error}"[:300]
    finally:
        record.finish()
    return record


async def closed_loop(
    request: Callable[[int], Awaitable[Any]],
    *,
    concurrency: int,
    max_requests: int,
    time_limit_s: float,
    stop: asyncio.Event | None = None,
) -> float:
    """Call `request(index)` for index 0, 1, ..., `concurrency` at a time, until `max_requests`
    were started, `time_limit_s` passed (no new request; the rest cancelled 5 s later) or `stop`
    is set. Returns the wall time in seconds."""
    deadline = time.monotonic() + time_limit_s
    started = time.monotonic()
    issued = 0

    async def worker() -> None:
        nonlocal issued
        while issued < max_requests and time.monotonic() < deadline and not (stop and stop.is_set()):
            index = issued
            issued += 1
            await request(index)

    tasks = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=time_limit_s + 5)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return time.monotonic() - started
