"""Completion choices → `text_completion` bodies and SSE frames, with `echo` and legacy logprobs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from server.api.encoders.frames import ChunkFrames, encode_json_string
from server.api.sse import KEEPALIVE_FRAME
from server.api.encoders.logprobs import CompletionLogprobs
from server.engine import EngineCompletion, EngineOutput
from server.generation import EnginePrompt, FinalChoice, Outcome


class CompletionEncoder(ChunkFrames):
    def __init__(
        self,
        *,
        request_id: str,
        model: str,
        prompts: Sequence[EnginePrompt],
        n: int,
        outcome: Outcome,
        token_text: Callable[[int], str],
        echo: bool = False,
        logprobs: int | None = None,
        tokens_as_ids: bool = False,
        include_usage: bool = False,
        continuous_usage: bool = False,
    ) -> None:
        super().__init__(
            id=f"cmpl-{request_id}", object_name="text_completion", model=model, outcome=outcome,
            include_usage=include_usage, continuous_usage=continuous_usage,
        )
        self.prompts = prompts
        self.n = n
        self.token_text = token_text
        self.echo = echo
        self.logprobs = logprobs
        self.tokens_as_ids = tokens_as_ids
        self.plain_deltas = logprobs is None and not echo and not continuous_usage
        # Streaming state per choice: logprobs not yet sent, and whether the echo went out.
        self._collectors: dict[int, CompletionLogprobs] = {}
        self._echoed: set[int] = set()

    def _collector(self) -> CompletionLogprobs:
        return CompletionLogprobs(self.logprobs or 0, self.token_text, self.tokens_as_ids)

    def _add_echo(self, index: int, text: str, output: EngineOutput, collector: CompletionLogprobs | None) -> str:
        """The prompt ahead of a choice's first text (and its logprobs ahead of the choice's)."""
        prompt = self.prompts[index // self.n]
        if collector is not None:
            collector.add(prompt.token_ids, output.prompt_logprobs)
        return (prompt.text or "") + text

    # --- streaming ------------------------------------------------------------------------

    def open(self) -> str:
        return KEEPALIVE_FRAME

    def content(self, index: int, text: str) -> str:
        return (
            f'{self._content_prefix}{index},"text":{encode_json_string(text)},'
            '"logprobs":null,"finish_reason":null}]}\n\n'
        )

    def choice(self, index: int, text: str, completion: EngineCompletion, output: EngineOutput) -> str:
        collector = None
        if self.logprobs is not None:
            collector = self._collectors.get(index)
            if collector is None:
                collector = self._collectors[index] = self._collector()
        if self.echo and index not in self._echoed:
            self._echoed.add(index)
            text = self._add_echo(index, text, output, collector)
        if collector is not None:
            collector.add(completion.token_ids, completion.logprobs)
        finish_reason = completion.finish_reason
        if not text and finish_reason is None:
            return ""  # logprobs so far go out with the next text
        return self.chunk(
            [
                {
                    "index": index,
                    "text": text,
                    "logprobs": collector.take() if collector is not None else None,
                    "finish_reason": finish_reason,
                }
            ]
        )

    # --- non-streaming --------------------------------------------------------------------

    def body(self, choices: Sequence[FinalChoice]) -> dict[str, Any]:
        rendered = []
        for choice in choices:
            collector = self._collector() if self.logprobs is not None else None
            text = self._add_echo(choice.index, choice.text, choice.output, collector) if self.echo else choice.text
            if collector is not None:
                collector.add(choice.completion.token_ids, choice.completion.logprobs)
            rendered.append(
                {
                    "index": choice.index,
                    "text": text,
                    "logprobs": collector.as_dict() if collector is not None else None,
                    "finish_reason": choice.completion.finish_reason,
                    "stop_reason": choice.completion.stop_reason,
                }
            )
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.head["created"],
            "model": self.model,
            "choices": rendered,
            "usage": self.outcome.usage(),
        }
