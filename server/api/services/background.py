"""`background: true`: a response that runs in the server while its client polls it.

- The create route stores it `in_progress`, owned by this server (`owner_name`), and answers
  at once; the generation runs in a task, inside admission like any request (a 429 at create
  when full), with the request timeout as its deadline.
- Its runner beats a heartbeat into the store every `HEARTBEAT_S`; the beat's answer says
  whether it was cancelled (`POST /v1/responses/{id}/cancel`, on any replica, writes
  `cancelled` in the store): then the generation stops. A cancel on this replica stops it at once.
- It ends `completed` or `incomplete` (its answer), `incomplete` when the drain's deadline
  stopped it, or `failed` (the engine died, a fault), each written only while it is still
  `in_progress`, so a cancel stands.
- At start, running responses nobody runs any more are marked `failed`: this server's own from
  before a crash (same owner), and anyone's whose heartbeat stopped `STALE_S` ago.
- With `stream: true`, its events go to an event log that clients follow and resume, here and
  through the store (`background_stream`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from server.api.encoders.frames import client_error
from server.api.encoders.responses import ResponsesEncoder
from server.api.services.background_stream import EventLog, events_of
from server.api.services.stored_responses import StoredResponses
from server.engine import Engine
from server.errors import APIError
from server.generation import Generation, GenerationInterrupted, Outcome, PreparedGeneration
from server.generation.loop import DRAIN
from server.ops.state import ServerState
from server.store import StoredResponse, StoreUnavailable

logger = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
STALE_S = 30.0
FINISHED_STATUS = ("in_progress",)  # a final write lands only on a response still running


def owner_name(port: int) -> str:
    """Who runs a background response: stable across a restart of the same server (a pod keeps
    its name, a host its hostname), distinct for two servers on one host."""
    return f"{socket.gethostname()}:{port}"


class BackgroundResponses:
    def __init__(self, stored: StoredResponses, owner: str) -> None:
        self.stored = stored
        self.owner = owner
        self._runners: dict[str, asyncio.Task] = {}
        self._work: dict[str, asyncio.Task] = {}
        self.logs: dict[str, EventLog] = {}  # the streamed ones running here

    async def start(
        self, state: ServerState, generation: Generation, encoder: ResponsesEncoder, outcome: Outcome,
        previous_id: str | None, input_items: list[dict[str, Any]], *, stream: bool = False,
    ) -> dict[str, Any]:
        """Store it running and start it; the `response` object to answer with. Streamed, its
        opening events are in the store before this returns, and `logs` holds its event log."""
        state.admission.try_enter()
        started = encoder.response("in_progress", [], None)
        record = StoredResponse(encoder.id, previous_id, time.time(), "in_progress", started, input_items)
        frames = generation.stream() if stream else None
        log = EventLog() if stream else None
        try:
            await self.stored.save_record(record, owner=self.owner)
            if frames is not None and log is not None:
                log.add(events_of(await anext(frames)))  # the opening, written before any token
                await log.flush(self.stored, encoder.id)  # a resumer on any replica finds it
        except BaseException:
            state.admission.leave()
            if frames is not None:
                await frames.aclose()
            raise
        work = self._pump(frames, log) if frames is not None and log is not None else generation.complete()
        runner = asyncio.create_task(self._run(state, generation, encoder, outcome, record, work, log))
        self._runners[encoder.id] = runner
        runner.add_done_callback(lambda _: self._runners.pop(encoder.id, None))
        if log is not None:
            self.logs[encoder.id] = log
            runner.add_done_callback(lambda _: self.logs.pop(encoder.id, None))
        return started

    @staticmethod
    async def _pump(frames: AsyncIterator[bytes], log: EventLog) -> None:
        try:
            async for chunk in frames:
                log.add(events_of(chunk))
        finally:
            await frames.aclose()  # cancelled (a cancel, the drain): the engine request ends too

    def cancel_here(self, response_id: str) -> None:
        """Stop it now if this server runs it (the store already says `cancelled`)."""
        work = self._work.get(response_id)
        if work is not None:
            work.cancel()

    async def _beat_until_done(self, response_id: str, work: asyncio.Task) -> None:
        while not work.done():
            await asyncio.wait({work}, timeout=HEARTBEAT_S)
            if work.done():
                return
            with contextlib.suppress(StoreUnavailable):  # the next beat tries again
                if await self.stored.heartbeat(response_id) == "cancelled":
                    work.cancel()

    async def _run(
        self, state: ServerState, generation: Generation, encoder: ResponsesEncoder, outcome: Outcome,
        record: StoredResponse, work_to_do: Coroutine[object, object, object], log: EventLog | None,
    ) -> None:
        work = asyncio.create_task(work_to_do)
        self._work[record.id] = work
        flusher = asyncio.create_task(log.flush_until_done(self.stored, record.id)) if log is not None else None
        try:
            await self._beat_until_done(record.id, work)
            await asyncio.wait({work})  # its end, whatever it is (read below, not raised)
            if log is not None and flusher is not None:
                log.finish()
                await flusher  # every event is in the store before the final record
            if work.cancelled():
                state.metrics.background_responses.labels("cancelled").inc()
                return  # cancelled: the store says so already
            # A stream ends with its error event rather than raising: the generation keeps it.
            final = self._final(encoder, work.exception() or generation.error)
            state.metrics.background_responses.labels(final["status"]).inc()
            with contextlib.suppress(APIError):  # the store is down: the next start marks it failed
                await self.stored.save_record(
                    StoredResponse(record.id, record.previous_id, record.created_at, final["status"], final,
                                   record.input_items),
                    owner=self.owner, only_if_status=FINISHED_STATUS,
                )
        except Exception:  # noqa: BLE001 - a background task has no client to tell
            logger.exception("background response failed")
        finally:
            self._work.pop(record.id, None)
            if log is not None:
                log.finish()
            if flusher is not None and not flusher.done():
                flusher.cancel()
            if not work.done():
                work.cancel()
            state.admission.leave(latency_s=time.monotonic() - outcome.arrival)
            outcome.finish()

    @staticmethod
    def _final(encoder: ResponsesEncoder, error: BaseException | None) -> dict[str, Any]:
        if error is None and encoder.final is not None:
            return encoder.final
        if isinstance(error, GenerationInterrupted) and error.reason == DRAIN:
            final = encoder.response("incomplete", [], None)
            final["incomplete_details"] = {"reason": "interrupted"}
            return final
        api_error = client_error(error or RuntimeError("no answer"))
        final = encoder.response("failed", [], None)
        final["error"] = {"code": api_error.code or api_error.type, "message": api_error.message}
        return final

    async def wait(self, timeout: float) -> None:
        """Let the running ones finish (the drain's deadline interrupts them), up to `timeout`."""
        runners = list(self._runners.values())
        if runners:
            logger.info("waiting for %d background responses", len(runners))
            await asyncio.wait(runners, timeout=timeout)


def background_generation(
    state: ServerState,
    engine: Engine,
    prepared: PreparedGeneration,
    encoder_for: Callable[[Outcome], ResponsesEncoder],
    request_id: str,
) -> tuple[Generation, ResponsesEncoder, Outcome]:
    outcome = Outcome(
        route="/v1/responses", request_id=request_id, metrics=state.metrics,
        deadline=time.monotonic() + state.settings.request_timeout,
    )
    encoder = encoder_for(outcome)
    return Generation(engine, prepared, encoder, outcome, state.interruptions), encoder, outcome
