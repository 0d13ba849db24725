"""Chat choices → `chat.completion` bodies and `chat.completion.chunk` SSE frames.

With tools (`tool_choice` set), each choice's output is a tool answer that `ChoiceCalls` reads;
it streams as OpenAI streams calls: per call one delta with `index`, `id`, `type` and
`function.name` (arguments ""), then `function.arguments` fragments that join to the arguments'
JSON, and `finish_reason: "tool_calls"`. An `auto` text answer streams as `content`. No text of
the JSON ever reaches `content`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from server.api.encoders.frames import ChunkFrames, encode_json_string
from server.api.sse import KEEPALIVE_FRAME
from server.api.encoders.logprobs import chat_logprob_content
from server.api.tool_calls import ChoiceCalls
from server.engine import EngineCompletion, EngineOutput
from server.generation import FinalChoice, Outcome
from prompt_formats import AnswerDelta, CallStarted


class ChatEncoder(ChunkFrames):
    def __init__(
        self,
        *,
        request_id: str,
        model: str,
        n: int,
        outcome: Outcome,
        token_text: Callable[[int], str],
        logprobs: bool = False,
        top_logprobs: int = 0,
        include_usage: bool = False,
        continuous_usage: bool = False,
        tool_choice: str | None = None,
    ) -> None:
        super().__init__(
            id=f"chatcmpl-{request_id}", object_name="chat.completion.chunk", model=model, outcome=outcome,
            include_usage=include_usage, continuous_usage=continuous_usage,
        )
        self.n = n
        self.token_text = token_text
        self.logprobs = logprobs
        self.top_logprobs = top_logprobs
        self.tool_choice = tool_choice
        self._calls = [ChoiceCalls() for _ in range(n)] if tool_choice is not None else None
        self.plain_deltas = not logprobs and not continuous_usage and self._calls is None

    def _choice_logprobs(self, completion: EngineCompletion) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        content = chat_logprob_content(completion.token_ids, completion.logprobs, self.top_logprobs, self.token_text)
        return {"content": content, "refusal": None}

    # --- streaming ------------------------------------------------------------------------

    def open(self) -> str:
        content = "" if self._calls is None else None  # a tool answer may have no content at all
        return KEEPALIVE_FRAME + "".join(
            self.chunk([{"index": index, "delta": {"role": "assistant", "content": content}, "logprobs": None, "finish_reason": None}])
            for index in range(self.n)
        )

    def _tool_deltas(self, index: int, text: str) -> list[dict[str, Any]]:
        """The deltas for a piece of choice `index`'s tool answer."""
        calls = self._calls[index]
        deltas: list[dict[str, Any]] = []
        for event in calls.feed(text):
            if isinstance(event, AnswerDelta):
                deltas.append({"content": event.text})
            elif isinstance(event, CallStarted):
                function = {"name": event.name, "arguments": ""}
                call = {"index": event.index, "id": calls.ids[event.index], "type": "function", "function": function}
                deltas.append({"tool_calls": [call]})
            else:
                deltas.append({"tool_calls": [{"index": event.index, "function": {"arguments": event.text}}]})
        return deltas

    def _tool_choice_frames(self, index: int, text: str, completion: EngineCompletion) -> str:
        frames = [
            {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
            for delta in self._tool_deltas(index, text)
        ]
        logprobs = self._choice_logprobs(completion)
        if logprobs and logprobs["content"]:
            frames.append({"index": index, "delta": {}, "logprobs": logprobs, "finish_reason": None})
        finish_reason = completion.finish_reason
        if finish_reason is not None:
            reason = self._calls[index].finish_reason(finish_reason)
            self.outcome.record_tool_calls(self.tool_choice, len(self._calls[index].calls()))
            frames.append({"index": index, "delta": {}, "logprobs": None, "finish_reason": reason,
                           "stop_reason": completion.stop_reason})
        return "".join(self.chunk([frame]) for frame in frames)

    def content(self, index: int, text: str) -> str:
        return (
            f'{self._content_prefix}{index},"delta":{{"content":{encode_json_string(text)}}},'
            '"logprobs":null,"finish_reason":null}]}\n\n'
        )

    def choice(self, index: int, text: str, completion: EngineCompletion, output: EngineOutput) -> str:
        if self._calls is not None:
            return self._tool_choice_frames(index, text, completion)
        finish_reason = completion.finish_reason
        logprobs = self._choice_logprobs(completion)
        if not text and finish_reason is None and not (logprobs and logprobs["content"]):
            return ""
        choice = {
            "index": index,
            "delta": {"content": text} if text else {},
            "logprobs": logprobs,
            "finish_reason": finish_reason,
        }
        if finish_reason is not None:
            choice["stop_reason"] = completion.stop_reason
        return self.chunk([choice])

    # --- non-streaming --------------------------------------------------------------------

    def _message(self, choice: FinalChoice) -> tuple[dict[str, Any], str | None]:
        """The choice's message and finish reason."""
        finish_reason = choice.completion.finish_reason
        if self._calls is None:
            return {"role": "assistant", "content": choice.text, "refusal": None}, finish_reason
        calls = self._calls[choice.index]
        calls.feed(choice.text)
        self.outcome.record_tool_calls(self.tool_choice, len(calls.calls()))
        message: dict[str, Any] = {"role": "assistant", "content": calls.answer, "refusal": None}
        if calls.calls():
            message["tool_calls"] = calls.chat_tool_calls()
        return message, calls.finish_reason(finish_reason)

    def body(self, choices: Sequence[FinalChoice]) -> dict[str, Any]:
        bodies = []
        for choice in choices:
            message, finish_reason = self._message(choice)
            bodies.append({
                "index": choice.index,
                "message": message,
                "logprobs": self._choice_logprobs(choice.completion),
                "finish_reason": finish_reason,
                "stop_reason": choice.completion.stop_reason,
            })
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.head["created"],
            "model": self.model,
            "choices": bodies,
            "usage": self.outcome.usage(),
        }
