"""Running one engine request: aborts, deadline and drain, with one await per output.

`run_generation` is the one place that iterates an engine request. Whatever its consumer does:
- the engine request is aborted at once when the consumer stops early (client disconnect,
  cancellation, an exception), so its KV cache is freed;
- the request's deadline, the server's drain deadline and engine death stop it with
  `GenerationInterrupted` (`EngineDead` when the engine died).

The per-output path is a single await on vLLM's own output stream: nothing is scheduled or
allocated per token. Deadlines, the drain and engine death reach every running request through
`Interruptions`, one per server: the deadlines share one timer (`loop.call_later`, armed for the
earliest), not a timer per request, and all act only when they fire, the way `asyncio.Timeout`
does. They abort the engine request with a reason: vLLM then ends its
output stream with an "abort" output, and the loop turns that into the interruption.
Keep-alive comments while no token flows are the SSE layer's (`server.api.sse`), not this loop's.

The abort runs in a task of its own: an SSE response that loses its client is torn down by an
anyio cancel scope, which cancels every further `await` in this generator's clean-up, and the
abort must happen anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
import uuid
from collections.abc import AsyncIterator

from server.engine import Engine, EngineDead, EngineOutput
from server.generation.prepared import EnginePrompt

# Aborts in flight, held so the event loop does not drop them before they run.
_pending_aborts: set[asyncio.Task] = set()

TIMEOUT = "timeout"
DRAIN = "drain"
ENGINE_DEAD = "engine_dead"


class GenerationInterrupted(Exception):
    """The request was stopped by the server (timeout or drain), not by the engine."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _interruption(reason: str) -> Exception:
    if reason == ENGINE_DEAD:
        return EngineDead("the inference engine stopped")
    if reason == TIMEOUT:
        return GenerationInterrupted(TIMEOUT, "The request timed out and was stopped.")
    return GenerationInterrupted(DRAIN, "The server is shutting down and stopped this request.")


class _Run:
    """One running engine request, as timers and `Interruptions` see it."""

    __slots__ = ("engine", "engine_id", "reason")

    def __init__(self, engine: Engine, engine_id: str) -> None:
        self.engine = engine
        self.engine_id = engine_id
        self.reason: str | None = None

    def interrupt(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            _abort_soon(self.engine, self.engine_id)


class Interruptions:
    """The running engine requests, so the server can stop them all at once, and their deadlines.

    `interrupt_all` is for the drain deadline and engine death; after it, a request that starts
    is interrupted at once (the server no longer admits new work by then, but one may have been
    admitted a moment before).

    Deadlines are a heap of (instant, run) behind one timer armed for the earliest: a request
    costs a heap push when it starts and nothing while it runs. A finished request's entry stays
    until its instant comes (or the heap is rebuilt when such entries outnumber the live ones).
    """

    def __init__(self) -> None:
        self._running: set[_Run] = set()
        self.reason: str | None = None
        self._deadlines: list[tuple[float, int, _Run]] = []
        self._order = itertools.count()  # ties in the heap never compare runs
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._timer_loop: asyncio.AbstractEventLoop | None = None  # tests run one per asyncio.run

    def __len__(self) -> int:
        return len(self._running)

    def interrupt_all(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        for run in list(self._running):
            run.interrupt(reason)

    def track(self, run: _Run, deadline: float | None = None) -> None:
        """`deadline`: the instant, on the event loop's clock (`loop.time()`), at which `run` is
        interrupted as a timeout."""
        self._running.add(run)
        if self.reason is not None:
            run.interrupt(self.reason)
        if deadline is not None:
            if len(self._deadlines) > 2 * len(self._running) + 64:
                self._deadlines = [entry for entry in self._deadlines if entry[2] in self._running]
                heapq.heapify(self._deadlines)
            heapq.heappush(self._deadlines, (deadline, next(self._order), run))
            if deadline < self._timer_at or self._timer is None or self._timer_loop is not asyncio.get_running_loop():
                self._arm(self._deadlines[0][0])

    def untrack(self, run: _Run) -> None:
        self._running.discard(run)

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer_loop = asyncio.get_running_loop()
        self._timer = self._timer_loop.call_at(at, self._expire)

    def _expire(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        now = asyncio.get_running_loop().time()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, run = heapq.heappop(self._deadlines)
            if run in self._running:
                run.interrupt(TIMEOUT)
        if self._deadlines:
            self._arm(self._deadlines[0][0])


def engine_request_id(request_id: str) -> str:
    # Clients may reuse an X-Request-Id; the engine id must be unique, since aborting by id
    # would otherwise hit every request sharing it.
    return f"{request_id}-{uuid.uuid4().hex[:8]}"


async def run_generation(
    engine: Engine,
    prompt: EnginePrompt,
    request_id: str,
    *,
    deadline: float,
    interruptions: Interruptions,
) -> AsyncIterator[EngineOutput]:
    """Yield the engine's `RequestOutput`s until the request finishes.

    `deadline` is a `time.monotonic()` instant.
    """
    run = _Run(engine, engine_request_id(request_id))
    # The event loop's clock, which the shared deadline timer runs on.
    interruptions.track(run, asyncio.get_running_loop().time() + (deadline - time.monotonic()))
    outputs = engine.stream(prompt.token_ids, prompt.text, prompt.params, run.engine_id)
    finished = False
    try:
        try:
            async for output in outputs:
                if output.finished:
                    finished = True
                    if run.reason is not None:
                        raise _interruption(run.reason)
                yield output
        except (GenerationInterrupted, EngineDead):
            raise
        except Exception as error:
            translated = engine.translate_error(error)
            if translated is None:
                raise
            raise translated from error
        if run.reason is not None:
            # The stream ended without a last output: only an abort does that.
            raise _interruption(run.reason)
    finally:
        interruptions.untrack(run)
        if not finished:
            # Closing vLLM's stream aborts internally, but only when it was waiting; an
            # explicit abort also covers a request that is queued or between outputs.
            _abort_soon(engine, run.engine_id)
        with contextlib.suppress(Exception):
            await outputs.aclose()


def _abort_soon(engine: Engine, engine_id: str) -> None:
    async def abort() -> None:
        with contextlib.suppress(Exception):
            await engine.abort(engine_id)

    task = asyncio.get_running_loop().create_task(abort())
    _pending_aborts.add(task)
    task.add_done_callback(_pending_aborts.discard)
