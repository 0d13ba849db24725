"""A response's one choice → the `response` object, or the Responses API's typed SSE events.

The stream, each event with the next `sequence_number` (from 0), no `[DONE]`:

    : keep-alive
    response.created, response.in_progress          the response, `in_progress`, no output yet
    response.output_item.added                      the assistant message, empty
    response.content_part.added                     its `output_text` part, empty
    response.output_text.delta ...                  the shaped text, as it comes
    response.output_text.done                       the whole text
    response.content_part.done, response.output_item.done
    response.completed                              the final response, with `usage`
                                                    (`response.incomplete` when it hit the limit)

A failure after the stream started ends it with an `error` event instead.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from server.api.encoding import client_error, dumps, encode_json_string, event_frame
from server.api.sse import KEEPALIVE_FRAME
from server.generation import FinalChoice, Outcome

TEXT_DELTA = "response.output_text.delta"


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def responses_usage(outcome: Outcome) -> dict[str, Any]:
    return {
        "input_tokens": outcome.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": outcome.cached_tokens,
            "cache_write_tokens": outcome.cache_write_tokens,
        },
        "output_tokens": outcome.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
    }


class ResponsesEncoder:
    plain_deltas = True

    def __init__(self, *, response_id: str, model: str, outcome: Outcome, echo: dict[str, Any]) -> None:
        self.id = response_id
        self.item_id = "msg_" + response_id.removeprefix("resp_")
        self.model = model
        self.outcome = outcome
        self.echo = echo  # the request's settings, repeated in every response object
        self.created_at = int(time.time())
        self._sequence = 0
        self._parts: list[str] = []
        self._finish_reason: str | None = None
        self.final: dict[str, Any] | None = None  # the finished response object (what is stored)
        # A delta event up to its text: the same for the whole stream (tests prove `content`
        # equals the general event).
        head = dumps({"type": TEXT_DELTA, **self._text_position(), "logprobs": []})
        self._delta_prefix = f"event: {TEXT_DELTA}\ndata: {head[:-1]},\"delta\":"

    # --- the objects ----------------------------------------------------------------------

    def _text_position(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "output_index": 0, "content_index": 0}

    @property
    def status(self) -> str:
        return "incomplete" if self._finish_reason == "length" else "completed"

    def message(self, status: str, text: str | None) -> dict[str, Any]:
        content = [] if text is None else [output_text(text)]
        return {"id": self.item_id, "type": "message", "status": status, "role": "assistant", "content": content}

    def response(self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None) -> dict[str, Any]:
        response = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "model": self.model,
            "output": output,
            **self.echo,
        }
        if usage is not None:  # OpenAI's schema has no null usage: absent until the end
            response["usage"] = usage
        return response

    def final_response(self, text: str) -> dict[str, Any]:
        status = self.status
        self.final = self.response(status, [self.message(status, text)], responses_usage(self.outcome))
        return self.final

    # --- streaming ------------------------------------------------------------------------

    def event(self, event_type: str, body: dict[str, Any]) -> str:
        frame = event_frame(event_type, dumps({"type": event_type, **body, "sequence_number": self._sequence}))
        self._sequence += 1
        return frame

    def open(self) -> str:
        started = self.response("in_progress", [], None)
        return (
            KEEPALIVE_FRAME
            + self.event("response.created", {"response": started})
            + self.event("response.in_progress", {"response": started})
            + self.event("response.output_item.added", {"output_index": 0, "item": self.message("in_progress", None)})
            + self.event("response.content_part.added", {**self._text_position(), "part": output_text("")})
        )

    def content(self, index: int, text: str) -> str:
        self._parts.append(text)
        sequence = self._sequence
        self._sequence += 1
        return f'{self._delta_prefix}{encode_json_string(text)},"sequence_number":{sequence}}}\n\n'

    def choice(self, index: int, text: str, completion: Any, output: Any) -> str:
        frames = self.content(index, text) if text else ""
        if completion.finish_reason is None:
            return frames
        self._finish_reason = completion.finish_reason
        whole = "".join(self._parts)
        position = self._text_position()
        return (
            frames
            + self.event("response.output_text.done", {**position, "text": whole, "logprobs": []})
            + self.event("response.content_part.done", {**position, "part": output_text(whole)})
            + self.event("response.output_item.done", {"output_index": 0, "item": self.message(self.status, whole)})
        )

    def close(self) -> str:
        final = self.final_response("".join(self._parts))
        kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
        return self.event(kind, {"response": final})

    def error(self, error: BaseException) -> str:
        api_error = client_error(error)
        return self.event(
            "error", {"code": api_error.code or api_error.type, "message": api_error.message, "param": api_error.param}
        )

    # --- non-streaming --------------------------------------------------------------------

    def body(self, choices: Sequence[FinalChoice]) -> dict[str, Any]:
        (choice,) = choices
        self._finish_reason = choice.completion.finish_reason
        return self.final_response(choice.text)
