"""SSE transport: headers, keep-alive comments, disconnects, through sse-starlette's public API.

The frames themselves come ready from the route's encoder (`data: <json>\\n\\n`, or a typed
event); they pass through sse-starlette untouched, as bytes. What this module adds:
- the same `: keep-alive` comment that every encoder's opening starts with (so headers and a
  byte reach the client, and any proxy, before the first token): sse-starlette's ping task sends it every
  `--sse-ping-seconds` (it fires on its own timer; the token path does nothing for it), so
  idle-timeout proxies keep a stream through a long queue or prefill. The ping uses our frame
  and `\\n` line ends, so every byte of the stream is ours;
- a callback when the exchange is over, however it ended (finished, failed, or its client
  left before the first event, when the frame generator never started);
- sse-starlette's own SIGTERM handling is off: the server drains streams itself
  (`server.ops.lifecycle`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import AppStatus

# sse-starlette would end every open stream as soon as uvicorn sees SIGTERM; the drain
# contract is that in-flight streams run to completion within the drain timeout.
AppStatus.disable_automatic_graceful_drain()

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SEPARATOR = "\n"
KEEPALIVE_COMMENT = "keep-alive"
KEEPALIVE_FRAME = f": {KEEPALIVE_COMMENT}{SEPARATOR}{SEPARATOR}"


def keepalive_event() -> ServerSentEvent:
    return ServerSentEvent(comment=KEEPALIVE_COMMENT, sep=SEPARATOR)


class EventStream(EventSourceResponse):
    """An SSE response that reports when the exchange is over, however it ended."""

    def __init__(self, *args: Any, on_close: Callable[[], None] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self._on_close is not None:
                self._on_close()


def sse_response(
    frames: AsyncIterator[bytes],
    *,
    ping_seconds: float,
    headers: dict[str, str] | None = None,
    on_close: Callable[[], None] | None = None,
) -> EventStream:
    # sse-starlette closes `frames` itself when a send fails, and a disconnect cancels it where
    # it waits, so its clean-up (aborting the engine request) runs at once either way.
    return EventStream(
        frames,
        headers={**STREAM_HEADERS, **(headers or {})},
        ping=ping_seconds,
        ping_message_factory=keepalive_event,
        sep=SEPARATOR,
        on_close=on_close,
    )
