"""SSE framing: `data: <json>\n\n` events, `: keep-alive` comments, an error event, `[DONE]`.

Payload producers (the chat and completions services) yield JSON strings, `KEEPALIVE`,
`ErrorEvent` and `DONE`; this module alone turns them into bytes on the wire through
sse-starlette, whose own SIGTERM handling is turned off: the server drains streams itself
(see `server.lifecycle`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from sse_starlette.sse import AppStatus, EventSourceResponse

from server.engine import EngineDead, EngineRejected
from server.errors import APIError, internal_error, invalid_request, unavailable
from server.generation import KEEPALIVE, GenerationInterrupted

logger = logging.getLogger(__name__)

# sse-starlette would end every open stream as soon as uvicorn sees SIGTERM; the drain
# contract is that in-flight streams run to completion within the drain timeout.
AppStatus.disable_automatic_graceful_drain()

DONE = "[DONE]"
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


# One encoder for the process: `json.dumps` with options builds a new JSONEncoder every call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
# A str as a JSON string literal, exactly as `dumps` writes strings (the C encoder's function).
encode_json_string = json.encoder.encode_basestring


def dumps(body: Any) -> str:
    return _ENCODER.encode(body)


class ErrorEvent:
    """The OpenAI error body sent as a stream's last data event."""

    def __init__(self, error: APIError) -> None:
        self.error = error

    @classmethod
    def from_exception(cls, exc: BaseException) -> "ErrorEvent":
        return cls(api_error_for(exc))

    def payload(self) -> str:
        return dumps(self.error.body())


def api_error_for(exc: BaseException) -> APIError:
    """The client-facing error for a failure during generation; never leaks internals."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, GenerationInterrupted):
        if exc.reason == "timeout":
            return APIError(504, exc.message, type="server_error", code="timeout")
        return unavailable(exc.message, retry_after=1)
    if isinstance(exc, EngineRejected):
        return invalid_request(exc.message, param=exc.param)
    if isinstance(exc, EngineDead):
        return unavailable("The inference engine stopped; the server is restarting.")
    logger.error("generation failed: %s", exc, exc_info=exc)
    return internal_error()


KEEPALIVE_FRAME = b": keep-alive\n\n"
DONE_FRAME = b"data: [DONE]\n\n"


def encode_frame(payload: Any) -> bytes:
    """One SSE frame. JSON from `dumps` has no raw newline, so one `data:` line is enough."""
    if payload is KEEPALIVE:
        return KEEPALIVE_FRAME
    if payload is DONE:
        return DONE_FRAME
    if isinstance(payload, ErrorEvent):
        payload = payload.payload()
    return b"data: " + payload.encode() + b"\n\n"


class _EventStream(EventSourceResponse):
    """An SSE response that reports when the exchange is over, however it ended.

    The callback runs when the ASGI call returns or is cancelled, so it also runs for a client
    that left before the first event, when the payload generator never started.
    """

    def __init__(self, *args: Any, on_close: Callable[[], None] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self._on_close is not None:
                self._on_close()

    async def _send_with_timeout(self, send: Any, message: Any) -> None:
        # sse-starlette wraps every event's send in an anyio cancel scope, even with no
        # send_timeout (ours): 3 of the 4 microseconds each event costs. With no timeout the
        # scope has nothing to do.
        if self.send_timeout is None:
            await send(message)
        else:
            await super()._send_with_timeout(send, message)


def sse_response(
    payloads: AsyncIterator[Any],
    *,
    headers: dict[str, str] | None = None,
    on_close: Callable[[], None] | None = None,
) -> EventSourceResponse:
    async def events() -> AsyncIterator[bytes]:
        try:
            async for payload in payloads:
                # Bytes pass through sse-starlette untouched: the framing is exactly ours.
                yield encode_frame(payload)
        finally:
            # Closing the producer runs its clean-up at once (the engine request is aborted
            # when the client left), rather than whenever the generator is collected.
            await payloads.aclose()

    return _EventStream(
        events(), headers={**STREAM_HEADERS, **(headers or {})}, ping=None, on_close=on_close
    )
