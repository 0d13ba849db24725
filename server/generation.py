"""Running one engine request: keep-alive ticks, aborts, deadlines, and drain.

`run_generation` is the one place that iterates an engine request. It guarantees three things
whatever the caller does with it:
- the engine request is aborted at once when the consumer stops early (client disconnect,
  cancellation, an exception), so its KV cache is freed;
- while no output arrives for `tick_seconds`, it yields `KEEPALIVE` so an SSE stream can send a
  comment and idle-timeout proxies keep the connection;
- it ends with `GenerationInterrupted` when the request passes its timeout or the server's
  drain deadline, aborting the engine request first (with `EngineDead` when the stop came
  because the engine died).

The abort runs in a task of its own: an SSE response that loses its client is torn down by an
anyio cancel scope, which cancels every further `await` in this generator's clean-up, and the
abort must happen anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from server.engine import Engine, EngineDead

KEEPALIVE = object()

# Aborts in flight, held so the event loop does not drop them before they run.
_pending_aborts: set[asyncio.Task] = set()


class GenerationInterrupted(Exception):
    """The request was stopped by the server (timeout or drain), not by the engine."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def engine_request_id(request_id: str) -> str:
    # Clients may reuse an X-Request-Id; the engine id must be unique, since aborting by id
    # would otherwise hit every request sharing it.
    return f"{request_id}-{uuid.uuid4().hex[:8]}"


async def run_generation(
    engine: Engine,
    token_ids: list[int],
    prompt_text: str | None,
    params: Any,
    request_id: str,
    *,
    tick_seconds: float | None,
    deadline: float,
    stop_event: asyncio.Event | None = None,
) -> AsyncIterator[Any]:
    """Yield engine outputs (and `KEEPALIVE` ticks) until the request finishes.

    `deadline` is a `time.monotonic()` instant; `stop_event`, when set, ends the request as
    the server's drain deadline does.
    """
    engine_id = engine_request_id(request_id)
    outputs = engine.generate(token_ids, prompt_text, params, engine_id).__aiter__()
    next_output: asyncio.Task | None = None
    stop_wait = asyncio.ensure_future(stop_event.wait()) if stop_event is not None else None
    finished = False
    try:
        while True:
            if next_output is None:
                next_output = asyncio.ensure_future(outputs.__anext__())
            remaining = deadline - time.monotonic()
            wait_for = remaining if tick_seconds is None else min(tick_seconds, remaining)
            waiters = {next_output} | ({stop_wait} if stop_wait is not None else set())
            done, _ = await asyncio.wait(waiters, timeout=max(wait_for, 0), return_when=asyncio.FIRST_COMPLETED)
            if next_output in done:
                task, next_output = next_output, None
                try:
                    output = task.result()
                except StopAsyncIteration:
                    finished = True
                    return
                finished = bool(getattr(output, "finished", False))
                yield output
                if finished:
                    return
                continue
            if stop_wait is not None and stop_wait in done:
                if engine.dead:
                    raise EngineDead("the inference engine stopped")
                raise GenerationInterrupted(
                    "drain", "The server is shutting down and stopped this request."
                )
            if time.monotonic() >= deadline:
                raise GenerationInterrupted("timeout", "The request timed out and was stopped.")
            yield KEEPALIVE
    finally:
        if stop_wait is not None:
            stop_wait.cancel()
        if not finished:
            # Cancelling the engine generator aborts internally, but only when it was waiting;
            # an explicit abort also covers a request that is queued or between outputs.
            _abort_soon(engine, engine_id)
        if next_output is not None:
            next_output.cancel()
            with contextlib.suppress(BaseException):
                await next_output
        with contextlib.suppress(Exception):
            await outputs.aclose()


def _abort_soon(engine: Engine, engine_id: str) -> None:
    async def abort() -> None:
        with contextlib.suppress(Exception):
            await engine.abort(engine_id)

    task = asyncio.get_running_loop().create_task(abort())
    _pending_aborts.add(task)
    task.add_done_callback(_pending_aborts.discard)
