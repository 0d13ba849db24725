"""Chat choices → `chat.completion` bodies and `chat.completion.chunk` SSE frames."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from server.api.encoding import ChunkFrames, encode_json_string
from server.api.sse import KEEPALIVE_FRAME
from server.api.logprobs import chat_logprob_content
from server.generation import FinalChoice, Outcome


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
    ) -> None:
        super().__init__(
            id=f"chatcmpl-{request_id}", object_name="chat.completion.chunk", model=model, outcome=outcome,
            include_usage=include_usage, continuous_usage=continuous_usage,
        )
        self.n = n
        self.token_text = token_text
        self.logprobs = logprobs
        self.top_logprobs = top_logprobs
        self.plain_deltas = not logprobs and not continuous_usage

    def _choice_logprobs(self, completion: Any) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        content = chat_logprob_content(completion.token_ids, completion.logprobs, self.top_logprobs, self.token_text)
        return {"content": content, "refusal": None}

    # --- streaming ------------------------------------------------------------------------

    def open(self) -> str:
        return KEEPALIVE_FRAME + "".join(
            self.chunk([{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}])
            for index in range(self.n)
        )

    def content(self, index: int, text: str) -> str:
        return (
            f'{self._content_prefix}{index},"delta":{{"content":{encode_json_string(text)}}},'
            '"logprobs":null,"finish_reason":null}]}\n\n'
        )

    def choice(self, index: int, text: str, completion: Any, output: Any) -> str:
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

    def body(self, choices: Sequence[FinalChoice]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.head["created"],
            "model": self.model,
            "choices": [
                {
                    "index": choice.index,
                    "message": {"role": "assistant", "content": choice.text, "refusal": None},
                    "logprobs": self._choice_logprobs(choice.completion),
                    "finish_reason": choice.completion.finish_reason,
                    "stop_reason": choice.completion.stop_reason,
                }
                for choice in choices
            ],
            "usage": self.outcome.usage(),
        }
