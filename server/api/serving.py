"""Admission, deadline, disconnects, metrics and the access log: the same for every generating route.

A route validates its request into a `PreparedGeneration` (a bad request is a 400 before any of
this) and names its encoder; `serve_generation` does the rest, streaming or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from fastapi import Request, Response
from fastapi.responses import JSONResponse

from server.api.encoders.frames import api_error_for, client_error
from server.api.sse import sse_response
from server.engine import Engine
from server.generation import ChoiceEncoder, Generation, Outcome, PreparedGeneration
from server.ops.load_report import FORMAT_HEADER, orca_header
from server.ops.state import ServerState

CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that went away before the answer


T = TypeVar("T")


class ClientDisconnected(Exception):
    pass


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run `work`, cancelling it (and so aborting its engine request) if the client goes away.

    Starlette does not cancel a non-streaming endpoint when its client disconnects; without
    this, an abandoned request would keep its engine slot until it finished.
    """
    task = asyncio.ensure_future(work)

    async def wait_for_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(wait_for_disconnect())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    raise ClientDisconnected()


async def _finishing_first(
    frames: AsyncIterator[bytes], generation: Generation, before_final: Callable[[], Awaitable[None]]
) -> AsyncIterator[bytes]:
    """`frames`, with `before_final` awaited before the closing frames (the generation is
    `completed` by the time they come); its failure replaces them with the encoder's error."""
    finished = False
    async for frame in frames:
        if generation.completed and not finished:
            finished = True
            try:
                await before_final()
            except Exception as error:  # noqa: BLE001 - the stream's last event says it
                generation.completed = False
                generation.error = error
                yield generation.encoder.error(error).encode()
                return
        yield frame


async def serve_generation(
    request: Request,
    state: ServerState,
    engine: Engine,
    route: str,
    prepared: PreparedGeneration,
    make_encoder: Callable[[Outcome], ChoiceEncoder],
    *,
    stream: bool,
    prompt: str | list[str] | None = None,
    before_final: Callable[[], Awaitable[None]] | None = None,
) -> Response:
    """Run `prepared` on the engine and answer with the encoder's body or SSE frames.

    `prompt` goes into the access log, with the output text, only under `--log-prompts`.
    `before_final` runs once the generation finished, before its client sees the end (the body,
    or the stream's closing frames): a stored response is written by then, so the client's next
    request finds it. Its failure is the request's error (a stream's last event).
    """
    settings = state.settings
    state.admission.try_enter()
    metrics_format = request.headers.get(FORMAT_HEADER)

    def with_load_report(headers: dict[str, str]) -> dict[str, str]:
        # vLLM's ORCA load report as the answer starts, only for a request that asks (a router's).
        return {**headers, **orca_header(metrics_format, state.metrics.registry, state.admission)}

    if prepared.dropped_messages:
        state.metrics.history_dropped.inc(prepared.dropped_messages)
    outcome = Outcome(
        route=route,
        request_id=request.state.request_id,
        metrics=state.metrics,
        deadline=time.monotonic() + settings.request_timeout,
    )
    generation = Generation(
        engine, prepared, make_encoder(outcome), outcome, state.interruptions, keep_text=settings.log_prompts
    )
    access_log = request.scope["state"].setdefault("access_log", {})

    def finish(aborted: str | None) -> None:
        state.admission.leave(latency_s=time.monotonic() - outcome.arrival)
        outcome.finish()
        if aborted is not None:
            state.metrics.aborted.labels(aborted).inc()
        access_log.update(
            {"prompt_tokens": outcome.prompt_tokens, "cached_tokens": outcome.cached_tokens,
             "completion_tokens": outcome.completion_tokens, "finish_reasons": outcome.finish_reasons, "aborted": aborted, **outcome.timings()}
        )
        if settings.log_prompts:
            access_log.update({
                "prompt": prompt, "output": generation.texts(),
                # What the engine itself tokenized, to check against the render routes.
                "prompt_token_ids": outcome.engine_prompt_token_ids,
            })

    def stream_ending() -> str | None:
        # Neither completed nor failed: the client went away first.
        if generation.error is not None:
            return api_error_for(generation.error).code or "error"
        return None if generation.completed else "disconnect"

    if stream:
        frames = generation.stream()
        if before_final is not None:
            frames = _finishing_first(frames, generation, before_final)
        return sse_response(
            frames,
            ping_seconds=settings.sse_ping_seconds,
            headers=with_load_report(prepared.headers),
            on_close=lambda: finish(stream_ending()),
        )

    aborted: str | None = None
    try:
        body = await cancel_on_disconnect(request, generation.complete())
        if before_final is not None:
            await before_final()
    except ClientDisconnected:
        aborted = "disconnect"
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    except Exception as error:  # noqa: BLE001 - mapped to the client-facing error
        api_error = client_error(error)
        aborted = api_error.code or "error"
        raise api_error from error
    finally:
        finish(aborted)
    return JSONResponse(body, headers=with_load_report(prepared.headers))
