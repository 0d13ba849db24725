"""What every route's encoder shares: compact JSON, OpenAI-style SSE data frames, and the
client-facing error for a failure during generation."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from server.engine import EngineDead, EngineRejected
from server.errors import APIError, internal_error, invalid_request, unavailable
from server.generation import GenerationInterrupted, Outcome

logger = logging.getLogger(__name__)

# One encoder for the process: `json.dumps` with options builds a new JSONEncoder every call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
# A str as a JSON string literal, exactly as `dumps` writes strings (the C encoder's function).
encode_json_string = json.encoder.encode_basestring

DONE_FRAME = "data: [DONE]\n\n"


def dumps(body: object) -> str:  # any JSON value
    return _ENCODER.encode(body)


def data_frame(payload: str) -> str:
    """One SSE event. JSON from `dumps` has no raw newline, so one `data:` line is enough."""
    return f"data: {payload}\n\n"


def event_frame(event_type: str, payload: str) -> str:
    """One typed SSE event, as the Responses API sends them: the type, then its JSON."""
    return f"event: {event_type}\ndata: {payload}\n\n"


class ChunkFrames:
    """What the chat and completion encoders share on a stream: one head for every chunk,
    `usage` on chunks (every one with `continuous_usage`, the last with `include_usage`), the
    closing frames and the error event. Each route's encoder adds its own choices."""

    def __init__(
        self, *, id: str, object_name: str, model: str, outcome: Outcome, include_usage: bool, continuous_usage: bool
    ) -> None:
        self.id = id
        self.model = model
        self.outcome = outcome
        self.include_usage = include_usage
        # `usage` so far on every chunk: every delta then takes the general `choice` path.
        self.continuous_usage = continuous_usage
        self.head = {"id": id, "object": object_name, "created": int(time.time()), "model": model}
        # Nearly every chunk is one content delta and nothing else: its JSON up to the choice
        # index is the same for the whole stream (tests prove each `content` equals `chunk`).
        self._content_prefix = "data: " + dumps(self.head)[:-1] + ',"choices":[{"index":'

    def chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> str:
        if usage is None and self.continuous_usage:
            usage = self.outcome.usage()
        body = {**self.head, "choices": choices}
        if usage is not None:
            body["usage"] = usage
        return data_frame(dumps(body))

    def close(self) -> str:
        if self.include_usage:
            return self.chunk([], self.outcome.usage()) + DONE_FRAME
        return DONE_FRAME

    def error(self, error: BaseException) -> str:
        return error_frames(error)


def api_error_for(exc: BaseException) -> APIError:
    """The client-facing error for a failure during generation; never leaks internals.

    Pure: `client_error` is the same mapping that also logs an unexpected fault (once).
    """
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
    return internal_error()


def client_error(exc: BaseException) -> APIError:
    """`api_error_for`, logging the details of an unexpected fault (its client sees a bare 500)."""
    error = api_error_for(exc)
    if error.status == 500 and not isinstance(exc, APIError):
        logger.error("generation failed: %s", exc, exc_info=exc)
    return error


def error_frames(exc: BaseException) -> str:
    """How a chat or completions stream ends after a failure: the error object, then [DONE]."""
    return data_frame(dumps(client_error(exc).body())) + DONE_FRAME
