"""Choice assembly: engine outputs → shaped choice text, token counts, finish → the route's encoder.

`Generation` is the part every generating route shares. It runs the prepared engine requests
(`run_generation`), shapes each choice's text (the prompt format's clean-up, or none), counts
tokens as they arrive (so a client that leaves mid-stream is still accounted for), classifies
why each choice stopped, and hands every piece to the route's `ChoiceEncoder`, which alone knows
the route's JSON and SSE shapes.

The streaming hot path is one engine await, one shaper step and one encoder call per output;
text-only deltas take the encoder's `content` shortcut, everything else (logprobs, echo, the
finish) its general `choice`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from server.engine import Engine, EngineCompletion, EngineOutput
from server.generation.loop import Interruptions, run_generation
from server.generation.outcome import Outcome, classify_stop
from server.generation.prepared import EnginePrompt, PreparedGeneration


@dataclass(frozen=True, slots=True)
class FinalChoice:
    """One finished choice of a non-streaming request."""

    index: int
    text: str  # shaped
    completion: EngineCompletion  # token_ids, logprobs, finish_reason, stop_reason
    output: EngineOutput  # its engine output (prompt token ids and prompt logprobs, for echo)


class ChoiceEncoder(Protocol):
    """A route's wire format. Streaming methods return ready SSE frames ("" for nothing)."""

    # False when every delta must go through `choice` (logprobs, echo).
    plain_deltas: bool

    def open(self) -> str:
        """Frames before any token (a chat's role chunks, a response's created events)."""
        ...

    def content(self, index: int, text: str) -> str:
        """The frame for a text-only delta of choice `index` (non-empty text, not finished)."""
        ...

    def choice(self, index: int, text: str, completion: EngineCompletion, output: EngineOutput) -> str:
        """The frame for any other delta: logprobs, echo, or the choice's finish."""
        ...

    def close(self) -> str:
        """Frames after every choice finished (usage, the stream's end)."""
        ...

    def error(self, error: BaseException) -> str:
        """Frames that end a stream that failed after it started."""
        ...

    def body(self, choices: Sequence[FinalChoice]) -> dict[str, Any]:
        """The non-streaming response body."""
        ...


class Generation:
    def __init__(
        self,
        engine: Engine,
        prepared: PreparedGeneration,
        encoder: ChoiceEncoder,
        outcome: Outcome,
        interruptions: Interruptions,
        *,
        keep_text: bool = False,
    ) -> None:
        self.engine = engine
        self.prepared = prepared
        self.encoder = encoder
        self.outcome = outcome
        self.interruptions = interruptions
        outcome.prompt_tokens = prepared.prompt_tokens
        make_shaper = prepared.shaper
        self._shapers = [make_shaper() for _ in range(prepared.choices)] if make_shaper else None
        # How the stream ended: `completed` once the encoder's close went out, `error` when it
        # failed after it started; neither when its client left first.
        self.completed = False
        self.error: BaseException | None = None
        # The text sent per choice, for the access log's `--log-prompts`.
        self._texts: list[list[str]] | None = [[] for _ in range(prepared.choices)] if keep_text else None

    def texts(self) -> list[str]:
        return ["".join(parts) for parts in self._texts or ()]

    def _outputs(self, position: int, prompt: EnginePrompt) -> AsyncIterator[EngineOutput]:
        request_id = self.outcome.request_id
        if len(self.prepared.prompts) > 1:
            request_id = f"{request_id}-{position}"
        return run_generation(
            self.engine, prompt, request_id, deadline=self.outcome.deadline, interruptions=self.interruptions
        )

    # --- non-streaming ------------------------------------------------------------------------

    async def complete(self) -> dict[str, Any]:
        async def final_output(position: int, prompt: EnginePrompt) -> EngineOutput:
            final: EngineOutput | None = None
            async for output in self._outputs(position, prompt):
                final = output
            if final is None:  # vLLM ends every request with a final output, or raises
                raise RuntimeError("the engine request ended without an output")
            return final

        prompts = self.prepared.prompts
        if len(prompts) == 1:
            finals = [await final_output(0, prompts[0])]
        else:
            finals = await asyncio.gather(*(final_output(i, p) for i, p in enumerate(prompts)))
        self.outcome.mark_first_token()
        for output in finals:
            self.outcome.record_prefill(output)
        choices = []
        for position, output in enumerate(finals):
            for completion in sorted(output.outputs, key=lambda c: c.index):
                index = position * self.prepared.n + completion.index
                text = completion.text
                if self._shapers is not None:
                    shaper = self._shapers[index]
                    text = shaper.feed(text) + shaper.finish()
                self.outcome.completion_tokens += len(completion.token_ids)
                self._record_finish(completion)
                if self._texts is not None:
                    self._texts[index].append(text)
                choices.append(FinalChoice(index, text, completion, output))
        body = self.encoder.body(choices)
        self.completed = True
        return body

    # --- streaming ----------------------------------------------------------------------------

    async def stream(self) -> AsyncIterator[bytes]:
        """The route's SSE frames, ending with the encoder's close or error frames."""
        encoder = self.encoder
        try:
            opening = encoder.open()
            if opening:
                yield opening.encode()
            prompts = self.prepared.prompts
            if len(prompts) == 1:
                async for output in self._outputs(0, prompts[0]):
                    frame = self._frame(0, output)
                    if frame:
                        yield frame.encode()
            else:
                async for frame in self._merged_frames(prompts):
                    yield frame.encode()
            closing = encoder.close()
            self.completed = True
            yield closing.encode()
        except Exception as error:  # noqa: BLE001 - every failure becomes the stream's last event
            self.error = error
            yield encoder.error(error).encode()

    async def _merged_frames(self, prompts: list[EnginePrompt]) -> AsyncIterator[str]:
        """Several engine requests (a completions prompt list) interleaved as outputs arrive."""
        queue: asyncio.Queue = asyncio.Queue()
        done = object()

        async def pump(position: int, prompt: EnginePrompt) -> None:
            base = position * self.prepared.n
            first = True
            async for output in self._outputs(position, prompt):
                if first:  # each prompt's prefix-cache counts come with its first output
                    first = False
                    self.outcome.record_prefill(output)
                queue.put_nowait((base, output))

        async def run_all() -> None:
            try:
                await asyncio.gather(*(pump(i, p) for i, p in enumerate(prompts)))
            except Exception as error:  # noqa: BLE001 - re-raised by the consumer below
                queue.put_nowait(error)
            queue.put_nowait(done)

        runner = asyncio.create_task(run_all())
        try:
            while (item := await queue.get()) is not done:
                if isinstance(item, Exception):
                    raise item
                frame = self._frame(*item)
                if frame:
                    yield frame
        finally:
            if not runner.done():
                runner.cancel()
                await asyncio.gather(runner, return_exceptions=True)

    def _frame(self, base: int, output: EngineOutput) -> str:
        if self.outcome.first_token_at is None:
            self.outcome.mark_first_token()
            if len(self.prepared.prompts) == 1:  # several prompts: recorded in `_merged_frames`
                self.outcome.record_prefill(output)
        completions = output.outputs
        if len(completions) == 1:
            return self._choice_frame(base, completions[0], output)
        return "".join(self._choice_frame(base, completion, output) for completion in completions)

    def _choice_frame(self, base: int, completion: EngineCompletion, output: EngineOutput) -> str:
        self.outcome.completion_tokens += len(completion.token_ids)
        index = base + completion.index
        text = completion.text
        shapers = self._shapers
        if shapers is not None:
            text = shapers[index].feed(text)
            if completion.finish_reason is not None:
                text += shapers[index].finish()
        if self._texts is not None:
            self._texts[index].append(text)
        if completion.finish_reason is None:
            if self.encoder.plain_deltas:
                return self.encoder.content(index, text) if text else ""
            return self.encoder.choice(index, text, completion, output)
        self._record_finish(completion)
        return self.encoder.choice(index, text, completion, output)

    def _record_finish(self, completion: EngineCompletion) -> None:
        reason = completion.finish_reason
        self.outcome.record_choice(reason, classify_stop(reason, completion.stop_reason, self.prepared.stop_strings))
