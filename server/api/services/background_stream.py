"""Streamed background responses: an event log that a client can leave and come back to.

A background response created with `stream: true` runs like any background response, and its
SSE events are kept twice:
- in this server's memory while it runs (`EventLog`): the creating connection and any client
  that resumes here follow it as events come;
- in the store, written every `FLUSH_S` on the store's thread, so a client that comes back
  through any replica (`GET /v1/responses/{id}?stream=true&starting_after=N`) replays what it
  missed, then follows the rest by reading the store every `POLL_S`.

The creating connection only follows: when its client leaves, the generation goes on. Every
follower ends at the stream's last event (`response.completed`, `.incomplete`, `.failed`, or an
`error` event), or when the response stops running without one: cancelled (the stream ends), or
marked failed after its server died (a `response.failed` event with the stored response ends
it); or at the server's request timeout.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from server.api.encoders.frames import dumps, event_frame
from server.api.services.stored_responses import StoredResponses
from server.errors import APIError, invalid_request
from server.store import StoreUnavailable

logger = logging.getLogger(__name__)

FLUSH_S = 0.2  # how far the store's copy of a running stream may lag behind its events
POLL_S = 0.25  # how often a follower on another replica reads the store
RUNNING = ("queued", "in_progress")
LAST_EVENTS = ("response.completed", "response.incomplete", "response.failed", "error")
SEQUENCE_KEY = '"sequence_number":'


def events_of(chunk: bytes) -> list[tuple[int, str]]:
    """The typed events in a chunk of the Responses stream, with their sequence numbers
    (keep-alive comments are not events). The encoder writes `sequence_number` last."""
    events = []
    for frame in chunk.decode().split("\n\n"):
        if frame.startswith("event: "):
            number = frame[frame.rindex(SEQUENCE_KEY) + len(SEQUENCE_KEY):].rstrip("}")
            events.append((int(number), frame + "\n\n"))
    return events


def is_last_event(frame: str) -> bool:
    return frame[len("event: "):frame.index("\n")] in LAST_EVENTS


class EventLog:
    """A running stream's events in memory, in order, and whoever waits for the next ones."""

    def __init__(self) -> None:
        self.events: list[tuple[int, str]] = []
        self.done = False
        self.flushed = 0  # how many of `events` the store holds
        self._changed = asyncio.Event()

    def add(self, events: list[tuple[int, str]]) -> None:
        if events:
            self.events.extend(events)
            self._wake()

    def finish(self) -> None:
        self.done = True
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def changed(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    async def follow(self, after: int) -> AsyncIterator[bytes]:
        position = bisect.bisect_right([seq for seq, _ in self.events], after)
        while True:
            while position < len(self.events):
                yield self.events[position][1].encode()
                position += 1
            if self.done:
                return
            await self.changed(timeout=60)

    async def flush(self, stored: StoredResponses, response_id: str) -> bool:
        """Write what the store lacks; False once the response is gone from the store (deleted
        or evicted): there is nothing left to keep."""
        pending = self.events[self.flushed:]
        if not pending:
            return True
        kept = await stored.append_events(response_id, pending)
        self.flushed += len(pending)
        return kept

    async def flush_until_done(self, stored: StoredResponses, response_id: str) -> None:
        """Every `FLUSH_S` until the stream ends, then the rest: the final record is written
        after this returns, so a follower that sees it finished has every event."""
        while True:
            if self.done:
                with contextlib.suppress(StoreUnavailable, APIError):
                    await self.flush(stored, response_id)
                return
            if self.flushed == len(self.events):
                await self.changed(timeout=FLUSH_S)
            else:
                await asyncio.sleep(FLUSH_S)  # a batch per interval, not a write per token
            try:
                if not await self.flush(stored, response_id):
                    return
            except (StoreUnavailable, APIError):  # the next interval tries again
                continue


async def follow_store(
    stored: StoredResponses, response_id: str, after: int, deadline: float
) -> AsyncIterator[bytes]:
    """Replay a streamed response's events after `after` from the store, then follow it there."""
    while True:
        status, events = await stored.events_after(response_id, after)
        for seq, frame in events:
            yield frame.encode()
            after = seq
            if is_last_event(frame):
                return
        if not events and status is not None and status not in RUNNING:
            # Stopped without a last event: marked failed after its server died. Say so as the
            # stream would have (a cancelled stream just ends: the Responses API has no event
            # for it).
            if status == "failed":
                record = await stored.get(response_id)
                failed = {"type": "response.failed", "response": record.response, "sequence_number": after + 1}
                yield event_frame("response.failed", dumps(failed)).encode()
            return
        if status is None or (not events and time.monotonic() > deadline):
            return
        if not events:
            await asyncio.sleep(POLL_S)


async def check_streamed(stored: StoredResponses, response_id: str) -> None:
    """A 404 for an unknown response, a 400 for one that was not created streaming."""
    await stored.get(response_id)  # the 404
    _, events = await stored.events_after(response_id, -1)
    if not events:
        raise invalid_request(
            "This response was not created with background: true and stream: true, so it has no "
            "events to stream; retrieve it without stream.",
            param="stream",
        )
