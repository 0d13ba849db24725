"""`/v1/completions`: a raw prompt (or several) straight to the engine, no chat rendering.

A list of prompts becomes one engine request per prompt, run concurrently; choice indexes go
prompt-major (`prompt_index * n + sample_index`), as OpenAI numbers them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from server.engine import Engine
from server.errors import invalid_request
from server.generation import KEEPALIVE, run_generation
from server.logprobs import CompletionLogprobs
from server.outcome import Outcome, classify_stop
from server.protocol import CompletionRequest
from server.sampling import build_sampling_params, check_n
from server.settings import Settings
from server.streaming import DONE, ErrorEvent, dumps


@dataclass
class PreparedPrompt:
    text: str
    token_ids: list[int]
    params: Any


class CompletionService:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings

    def prepare(self, request: CompletionRequest) -> list[PreparedPrompt]:
        check_n(request, self.settings)
        if request.suffix:
            raise invalid_request("suffix is not supported by this model.", param="suffix")
        if request.best_of is not None and request.best_of != request.n:
            raise invalid_request("best_of is not supported; use n.", param="best_of")
        max_model_len = self.engine.info.max_model_len
        prepared = []
        for text in request.prompts:
            token_ids = self.engine.tokenize(text)
            if not token_ids:
                raise invalid_request("prompt must not be empty.", param="prompt")
            asked = request.requested_max_tokens
            if len(token_ids) + (asked or 1) > max_model_len:
                raise invalid_request(
                    f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                    f"{len(token_ids) + (asked or 1)} tokens ({len(token_ids)} in the prompt, {asked or 1} in "
                    "the completion). Please reduce the length of the prompt or completion.",
                    param="prompt", code="context_length_exceeded",
                )
            max_tokens = asked or min(self.settings.default_max_tokens, max_model_len - len(token_ids))
            params = build_sampling_params(
                request,
                info=self.engine.info,
                max_tokens=max_tokens,
                stops=[request.stop] if isinstance(request.stop, str) else list(request.stop or []),
                stream=request.stream,
                logprobs=request.logprobs,
                prompt_logprobs=request.logprobs if request.echo and request.logprobs is not None else None,
                response_format=request.response_format,
            )
            prepared.append(PreparedPrompt(text, token_ids, params))
        return prepared

    def _logprobs(self, request: CompletionRequest, text_offset: int = 0) -> CompletionLogprobs:
        return CompletionLogprobs(
            request.logprobs or 0, self.engine.token_text, request.return_tokens_as_token_ids, text_offset
        )

    async def complete(
        self, request: CompletionRequest, prompts: list[PreparedPrompt], request_id: str, outcome: Outcome
    ) -> dict:
        async def final_output(position: int, prompt: PreparedPrompt) -> Any:
            final = None
            async for output in run_generation(
                self.engine, prompt.token_ids, prompt.text, prompt.params, f"{request_id}-{position}",
                tick_seconds=None, deadline=outcome.deadline, stop_event=outcome.stop_event,
            ):
                final = output
            return final

        finals = await asyncio.gather(*(final_output(i, p) for i, p in enumerate(prompts)))
        choices = []
        completion_tokens = 0
        for position, (prompt, final) in enumerate(zip(prompts, finals)):
            for completion in sorted(final.outputs, key=lambda c: c.index):
                completion_tokens += len(completion.token_ids)
                outcome.record_choice(
                    completion.finish_reason, classify_stop(completion.finish_reason, completion.stop_reason)
                )
                text = (prompt.text + completion.text) if request.echo else completion.text
                logprobs = None
                if request.logprobs is not None:
                    collector = self._logprobs(request)
                    if request.echo:
                        collector.add(prompt.token_ids, final.prompt_logprobs)
                    collector.add(completion.token_ids, completion.logprobs)
                    logprobs = collector.as_dict()
                choices.append(
                    {
                        "index": position * request.n + completion.index,
                        "text": text,
                        "logprobs": logprobs,
                        "finish_reason": completion.finish_reason,
                        "stop_reason": completion.stop_reason,
                    }
                )
        outcome.record_tokens(sum(len(p.token_ids) for p in prompts), completion_tokens)
        return {
            "id": f"cmpl-{request_id}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.engine.info.served_name,
            "choices": choices,
            "usage": outcome.usage(),
        }

    async def stream(
        self, request: CompletionRequest, prompts: list[PreparedPrompt], request_id: str, outcome: Outcome
    ) -> AsyncIterator[Any]:
        head = {
            "id": f"cmpl-{request_id}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.engine.info.served_name,
        }
        queue: asyncio.Queue = asyncio.Queue()
        # Counted as tokens arrive, so a client that leaves mid-stream is still accounted for.
        outcome.record_tokens(sum(len(p.token_ids) for p in prompts), 0)

        async def pump(position: int, prompt: PreparedPrompt) -> None:
            collectors: dict[int, CompletionLogprobs] = {}
            echoed: set[int] = set()
            async for output in run_generation(
                self.engine, prompt.token_ids, prompt.text, prompt.params, f"{request_id}-{position}",
                tick_seconds=self.settings.sse_ping_seconds, deadline=outcome.deadline,
                stop_event=outcome.stop_event,
            ):
                if output is KEEPALIVE:
                    await queue.put(KEEPALIVE)
                    continue
                outcome.mark_first_token()
                for completion in output.outputs:
                    outcome.completion_tokens += len(completion.token_ids)
                    text = completion.text
                    collector = collectors.setdefault(completion.index, self._logprobs(request))
                    if request.echo and completion.index not in echoed:
                        echoed.add(completion.index)
                        text = prompt.text + text
                        if request.logprobs is not None:
                            collector.add(prompt.token_ids, output.prompt_logprobs)
                    if request.logprobs is not None:
                        collector.add(completion.token_ids, completion.logprobs)
                    if completion.finish_reason is not None:
                        outcome.record_choice(
                            completion.finish_reason,
                            classify_stop(completion.finish_reason, completion.stop_reason),
                        )
                    if not text and completion.finish_reason is None:
                        continue
                    choice = {
                        "index": position * request.n + completion.index,
                        "text": text,
                        "logprobs": collector.take() if request.logprobs is not None else None,
                        "finish_reason": completion.finish_reason,
                    }
                    await queue.put(dumps({**head, "choices": [choice]}))

        async def run_all() -> None:
            try:
                await asyncio.gather(*(pump(i, p) for i, p in enumerate(prompts)))
            except Exception as error:  # noqa: BLE001 - becomes the stream's error event
                await queue.put(ErrorEvent.from_exception(error))
            await queue.put(DONE)

        yield KEEPALIVE
        runner = asyncio.create_task(run_all())
        try:
            while True:
                payload = await queue.get()
                if payload is DONE:
                    if request.stream_options is not None and request.stream_options.include_usage:
                        yield dumps({**head, "choices": [], "usage": outcome.usage()})
                    yield DONE
                    return
                yield payload
        finally:
            if not runner.done():
                runner.cancel()
                await asyncio.gather(runner, return_exceptions=True)
