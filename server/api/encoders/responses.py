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

With tools (`tool_choice` set) nothing is known to be a message or a call until the model writes
it: after `response.in_progress`, an `auto` text answer opens the message as above, and each call
is its own `function_call` item (`call_id`, `name`, `arguments`):

    response.output_item.added                      the call, `in_progress`, arguments ""
    response.function_call_arguments.delta ...      fragments that join to the arguments' JSON
    response.function_call_arguments.done           the whole arguments
    response.output_item.done                       the call, `completed`
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from server.api.encoders.frames import client_error, dumps, encode_json_string, event_frame
from prompt_formats import AnswerDelta, CallStarted
from prompt_formats.tool_output import Event
from server.api.sse import KEEPALIVE_FRAME
from server.api.tool_calls import ChoiceCalls
from server.engine import EngineCompletion, EngineOutput
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


def function_call(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id, "name": name,
            "arguments": arguments}


class ResponsesEncoder:
    def __init__(
        self, *, response_id: str, model: str, outcome: Outcome, echo: dict[str, Any], tool_choice: str | None = None
    ) -> None:
        # Item ids derive from the response's own id (unique, unlike a client's X-Request-Id).
        self.request_id = response_id.removeprefix("resp_")
        self.tool_choice = tool_choice
        self._calls = ChoiceCalls() if tool_choice is not None else None
        self.plain_deltas = self._calls is None
        self._message_open = False
        self._call_open: int | None = None  # the call whose item is streaming
        self.id = response_id
        self.item_id = f"msg_{self.request_id}"
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

    def _call_item_id(self, index: int) -> str:
        return f"fc_{self.request_id}_{index}"

    def _call_item(self, index: int, status: str) -> dict[str, Any]:
        call_id, name, arguments = self._calls.calls()[index]
        return function_call(self._call_item_id(index), call_id, name, arguments, status)

    def _output(self, text: str) -> list[dict[str, Any]]:
        status = self.status
        if self._calls is None:
            return [self.message(status, text)]
        output = [] if self._calls.answer is None else [self.message(status, self._calls.answer)]
        calls = self._calls.calls()
        output += [
            self._call_item(index, "completed" if self._calls.complete(index) else status) for index in range(len(calls))
        ]
        return output

    def final_response(self, text: str) -> dict[str, Any]:
        self.final = self.response(self.status, self._output(text), responses_usage(self.outcome))
        return self.final

    # --- streaming ------------------------------------------------------------------------

    def event(self, event_type: str, body: dict[str, Any]) -> str:
        frame = event_frame(event_type, dumps({"type": event_type, **body, "sequence_number": self._sequence}))
        self._sequence += 1
        return frame

    def open(self) -> str:
        started = self.response("in_progress", [], None)
        frames = (
            KEEPALIVE_FRAME
            + self.event("response.created", {"response": started})
            + self.event("response.in_progress", {"response": started})
        )
        return frames if self._calls is not None else frames + self._open_message()

    def _open_message(self) -> str:
        self._message_open = True
        return (
            self.event("response.output_item.added", {"output_index": 0, "item": self.message("in_progress", None)})
            + self.event("response.content_part.added", {**self._text_position(), "part": output_text("")})
        )

    def _close_message(self) -> str:
        if not self._message_open:
            return ""
        self._message_open = False
        whole = "".join(self._parts)
        position = self._text_position()
        return (
            self.event("response.output_text.done", {**position, "text": whole, "logprobs": []})
            + self.event("response.content_part.done", {**position, "part": output_text(whole)})
            + self.event("response.output_item.done", {"output_index": 0, "item": self.message(self.status, whole)})
        )

    # --- tool answers ---------------------------------------------------------------------------

    def _tool_event_frames(self, event: Event) -> str:
        if isinstance(event, AnswerDelta):  # an `auto` answer: the only output, at index 0
            return ("" if self._message_open else self._open_message()) + self.content(0, event.text)
        if isinstance(event, CallStarted):
            frames = self._close_call()
            self._call_open = event.index
            item = function_call(self._call_item_id(event.index), self._calls.ids[event.index], event.name, "", "in_progress")
            return frames + self.event("response.output_item.added", {"output_index": event.index, "item": item})
        return self.event(
            "response.function_call_arguments.delta",
            {"item_id": self._call_item_id(event.index), "output_index": event.index, "delta": event.text},
        )

    def _close_call(self) -> str:
        if self._call_open is None:
            return ""
        index, self._call_open = self._call_open, None
        _, name, arguments = self._calls.calls()[index]
        position = {"item_id": self._call_item_id(index), "output_index": index}
        return (
            self.event("response.function_call_arguments.done", {**position, "name": name, "arguments": arguments})
            + self.event("response.output_item.done", {"output_index": index, "item": self._call_item(
                index, "completed" if self._calls.complete(index) else self.status)})
        )

    def _tool_frames(self, text: str, completion: EngineCompletion) -> str:
        frames = "".join(self._tool_event_frames(event) for event in self._calls.feed(text))
        if completion.finish_reason is None:
            return frames
        self._finish_reason = completion.finish_reason
        self.outcome.record_tool_calls(self.tool_choice, len(self._calls.calls()))
        return frames + self._close_message() + self._close_call()

    def content(self, index: int, text: str) -> str:
        self._parts.append(text)
        sequence = self._sequence
        self._sequence += 1
        return f'{self._delta_prefix}{encode_json_string(text)},"sequence_number":{sequence}}}\n\n'

    def choice(self, index: int, text: str, completion: EngineCompletion, output: EngineOutput) -> str:
        if self._calls is not None:
            return self._tool_frames(text, completion)
        frames = self.content(index, text) if text else ""
        if completion.finish_reason is None:
            return frames
        self._finish_reason = completion.finish_reason
        return frames + self._close_message()

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
        if self._calls is not None:
            self._calls.feed(choice.text)
            self.outcome.record_tool_calls(self.tool_choice, len(self._calls.calls()))
        return self.final_response(choice.text)
