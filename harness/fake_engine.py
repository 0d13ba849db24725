"""A fake of vLLM's `AsyncLLM`, for tests (and `bench/frontend_micro.py`) that isolate our layers.

Only vLLM's engine is replaced: the server's own `server.engine.Engine` wraps this fake exactly
as it wraps `AsyncLLM`, and what the fake hands out are vLLM's real data types
(`RequestOutput`, `CompletionOutput`, `Logprob`) and its real `EngineDeadError`, so everything
from `Engine.stream` up is the server's real code. The fake never ships: harness/ is the checkout's
kit for tests and benchmarks, outside the wheel and the image.

What the fake "model" does, per choice: it writes `reply` one token at a time (a byte-level
tokenizer: one token per UTF-8 byte), then an EOS (finish `stop`, no stop reason), or with
`ignore_eos` writes `reply` again until `max_tokens` (finish `length`). It honours what vLLM
honours that the server relies on: `max_tokens`, `min_tokens`, `ignore_eos`, `stop` strings
(text cut before the stop, `stop_reason` the string), `n`, `logprobs`, `prompt_logprobs`, and the
output kind (DELTA outputs while streaming, one FINAL_ONLY output otherwise). Timing is set by
`first_token_delay_s` (the prefill) and `token_delay_s`. `abort` ends a request's stream with an
`abort` output, as vLLM's output processor does; `kill` makes every stream raise
`EngineDeadError` and `errored` turn true, as a dead engine core does. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

# vLLM's own data types and errors, imported here rather than on a first request's clock
# (`vllm.inputs.engine` is what the server's `Engine.stream` imports).
import vllm.inputs.engine  # noqa: F401
from vllm.logprobs import Logprob
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import RequestOutputKind, SamplingParams
from vllm.v1.engine.exceptions import EngineDeadError

BOS, EOS, OFFSET = 1, 2, 3  # token ids: BOS, EOS, then byte b is token b + OFFSET
DEFAULT_REPLY = "The capital of France is Paris."
POLL_S = 0.01  # how often a waiting request looks for an abort or the engine's death


class FakeTokenizer:
    """Byte-level: each UTF-8 byte is one token, so any text round-trips (lossy only at splits)."""

    bos_token_id = BOS
    eos_token_id = EOS
    vocab_size = 256 + OFFSET

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = [byte + OFFSET for byte in text.encode("utf-8")]
        return [BOS, *ids] if add_special_tokens else ids

    def decode(self, token_ids: list[int]) -> str:
        return bytes(t - OFFSET for t in token_ids if t >= OFFSET).decode("utf-8", errors="replace")


def fake_checkpoint() -> str:
    """A new directory that stands for the fake's checkpoint: the server reads its config.json
    before the engine starts (the attention plan) and vLLM's engine arguments want a path that
    exists under HF_HUB_OFFLINE. The caller removes it."""
    directory = tempfile.mkdtemp(prefix="fake-model-")
    config = {"model_type": "llama", "num_attention_heads": 1, "hidden_size": 64, "torch_dtype": "bfloat16"}
    with open(f"{directory}/config.json", "w") as file:
        json.dump(config, file)
    return directory


@dataclass
class FakeModelConfig:
    """The part of vLLM's `ModelConfig` that `Engine.start` reads."""

    max_model_len: int = 8192
    sampling_defaults: dict[str, Any] = field(default_factory=dict)

    def get_vocab_size(self) -> int:
        return FakeTokenizer.vocab_size

    def get_diff_sampling_param(self) -> dict[str, Any]:
        return dict(self.sampling_defaults)


@dataclass
class _Choice:
    index: int
    token_ids: list[int] = field(default_factory=list)
    text: str = ""  # everything written so far, stop text excluded
    sent_tokens: int = 0  # how much of it earlier DELTA outputs carried
    sent_chars: int = 0
    finish_reason: str | None = None
    stop_reason: Any = None
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))


@dataclass
class FakeRequest:
    request_id: str
    prompt_ids: list[int]
    params: Any
    aborted: bool = False
    finished: bool = False


class FakeAsyncLLM:
    """Stands in for `vllm.v1.engine.async_llm.AsyncLLM` behind `server.engine.Engine`."""

    def __init__(
        self,
        *,
        reply: str = DEFAULT_REPLY,
        token_delay_s: float = 0.0,
        first_token_delay_s: float = 0.0,
        max_model_len: int = 8192,
        load_delay_s: float = 0.0,
        load_error: Exception | None = None,
    ) -> None:
        self.reply = reply
        self.token_delay_s = token_delay_s
        self.first_token_delay_s = first_token_delay_s
        self.load_delay_s = load_delay_s
        self.load_error = load_error  # what `from_engine_args` raises, as vLLM does for a bad checkpoint
        self.model_config = FakeModelConfig(max_model_len=max_model_len)
        self.tokenizer = FakeTokenizer()
        self.requests: dict[str, FakeRequest] = {}  # running, by request id
        self.started: list[FakeRequest] = []  # every request ever added, in order
        self.aborted: list[str] = []  # ids aborted while they ran
        self.engine_args: Any = None
        self.is_dead = False
        self.shut_down = False

    @contextlib.contextmanager
    def paced(self, **delays: float) -> Iterator[None]:
        """Other `token_delay_s` / `first_token_delay_s` for the requests of a block."""
        saved = {name: getattr(self, name) for name in delays}
        for name, value in delays.items():
            setattr(self, name, value)
        try:
            yield
        finally:
            for name, value in saved.items():
                setattr(self, name, value)

    # --- what `Engine.start` and `Engine` use ------------------------------------------------

    def from_engine_args(self, engine_args: Any) -> "FakeAsyncLLM":
        """`AsyncLLM.from_engine_args`: records the arguments; blocks `load_delay_s` like a load."""
        self.engine_args = engine_args
        time.sleep(self.load_delay_s)
        if self.load_error is not None:
            raise self.load_error
        return self

    def get_tokenizer(self) -> FakeTokenizer:
        return self.tokenizer

    @property
    def errored(self) -> bool:
        return self.is_dead

    def shutdown(self, timeout: float | None = None) -> None:
        self.shut_down = True

    async def abort(self, request_id: str) -> None:
        request = self.requests.get(request_id)
        if request is not None and not request.aborted:
            request.aborted = True
            self.aborted.append(request_id)

    def kill(self) -> None:
        """The engine core died: `errored` turns true and every stream raises (thread-safe)."""
        self.is_dead = True

    @property
    def running(self) -> int:
        """Requests the engine still holds (vLLM's `num_requests_running` plus waiting)."""
        return len(self.requests)

    async def generate(self, prompt: Any, params: Any, request_id: str) -> AsyncIterator[Any]:
        if self.is_dead:
            raise EngineDeadError()
        request = FakeRequest(request_id, list(prompt["prompt_token_ids"]), params)
        self.requests[request_id] = request
        self.started.append(request)
        try:
            async for output in self._outputs(request):
                yield output
        except (asyncio.CancelledError, GeneratorExit):
            # As vLLM does when its consumer goes away: the request is aborted.
            await self.abort(request_id)
            raise
        finally:
            self.requests.pop(request_id, None)

    # --- the "model" --------------------------------------------------------------------------

    async def _outputs(self, request: FakeRequest) -> AsyncIterator[Any]:
        params = request.params
        choices = [_Choice(i) for i in range(params.n)]
        reply_ids = self.tokenizer.encode(self.reply)
        delta = params.output_kind == RequestOutputKind.DELTA
        first = True
        while True:
            await self._pause(request, self.first_token_delay_s if first else self.token_delay_s)
            first_output = first
            first = False
            if request.aborted:
                for choice in choices:
                    if choice.finish_reason is None:
                        choice.finish_reason = "abort"
                request.finished = True
                yield self._output(request, choices, delta, first_output)
                return
            for choice in choices:
                if choice.finish_reason is None:
                    self._step(choice, params, reply_ids)
            request.finished = all(choice.finish_reason is not None for choice in choices)
            if delta or request.finished:
                output = self._output(request, choices, delta, first_output)
                if output.outputs or request.finished:
                    yield output
            if request.finished:
                return

    def _step(self, choice: _Choice, params: Any, reply_ids: list[int]) -> None:
        """One decoding step of one choice: a token, then whether (and why) it finished."""
        written = len(choice.token_ids)
        at_end = written > 0 and written % len(reply_ids) == 0
        if at_end and not params.ignore_eos and written >= (params.min_tokens or 0):
            choice.token_ids.append(EOS)  # the EOS token counts, its text is empty
            choice.finish_reason = "stop"
            return
        token = reply_ids[written % len(reply_ids)]
        choice.token_ids.append(token)
        before = len(choice.text)
        choice.text += choice.decoder.decode(bytes([token - OFFSET]))
        for stop in params.stop or ():
            at = choice.text.find(stop, max(0, before - len(stop) + 1))
            if at >= 0:
                choice.text = choice.text[:at]
                choice.finish_reason, choice.stop_reason = "stop", stop
                return
        if len(choice.token_ids) >= params.max_tokens:
            choice.finish_reason = "length"

    def _output(self, request: FakeRequest, choices: list[_Choice], delta: bool, first: bool) -> Any:
        params = request.params
        # vLLM holds back text that may still become a stop string until it is sure.
        hold = max((len(stop) - 1 for stop in params.stop or ()), default=0)
        completions = []
        for choice in choices:
            done = choice.finish_reason is not None
            shown = len(choice.text) if done else max(choice.sent_chars, len(choice.text) - hold)
            if delta:
                token_ids = choice.token_ids[choice.sent_tokens:]
                text = choice.text[choice.sent_chars:shown]
                if not token_ids and not done and not text:
                    continue
            else:
                token_ids, text = list(choice.token_ids), choice.text
            if delta and choice.sent_tokens == len(choice.token_ids) and done and choice.finish_reason != "abort":
                continue  # its finish already went out
            logprobs = self._logprobs(token_ids, params.logprobs) if params.logprobs is not None else None
            completions.append(
                CompletionOutput(
                    index=choice.index, text=text, token_ids=token_ids, cumulative_logprob=None,
                    logprobs=logprobs, finish_reason=choice.finish_reason, stop_reason=choice.stop_reason,
                )
            )
            choice.sent_tokens, choice.sent_chars = len(choice.token_ids), shown
        prompt_logprobs = None
        if params.prompt_logprobs is not None and (first or not delta):
            prompt_logprobs = [None, *self._logprobs(request.prompt_ids[1:], params.prompt_logprobs)]
        return RequestOutput(
            request_id=request.request_id, prompt=None, prompt_token_ids=request.prompt_ids,
            prompt_logprobs=prompt_logprobs, outputs=completions, finished=request.finished,
        )

    def _logprobs(self, token_ids: list[int], top: int) -> list[dict[int, Any]]:
        """The chosen token at rank 1 (-0.25) and `top` alternatives below it, decoded."""
        positions = []
        for token_id in token_ids:
            ranked = [token_id] + [t for t in range(OFFSET + 65, OFFSET + 65 + top + 1) if t != token_id][:top]
            positions.append(
                {
                    candidate: Logprob(-0.25 * (rank + 1), rank + 1, self.tokenizer.decode([candidate]))
                    for rank, candidate in enumerate(ranked)
                }
            )
        return positions

    async def _pause(self, request: FakeRequest, seconds: float) -> None:
        """Wait `seconds` (one event-loop pass at least), waking early for an abort or death."""
        deadline = time.monotonic() + seconds
        while True:
            if self.is_dead:
                raise EngineDeadError()
            left = deadline - time.monotonic()
            if request.aborted or left <= 0:
                await asyncio.sleep(0)
                if self.is_dead:
                    raise EngineDeadError()
                return
            await asyncio.sleep(min(POLL_S, left))


def fake_engine(llm: FakeAsyncLLM | None = None) -> Any:
    """The server's real `Engine` around a fake (what `Engine.start` builds, without a start)."""
    from server.engine import Engine, ModelInfo

    llm = llm or FakeAsyncLLM()
    config = llm.model_config
    info = ModelInfo(
        max_model_len=config.max_model_len, vocab_size=config.get_vocab_size(),
        bos_token_id=FakeTokenizer.bos_token_id, sampling_defaults=config.get_diff_sampling_param(),
    )
    return Engine(llm, info, llm.get_tokenizer())


def sampling(stream: bool = True, **fields: Any) -> Any:
    """vLLM's real `SamplingParams`, streamed (DELTA) or not (FINAL_ONLY), greedy by default."""
    kind = RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY
    return SamplingParams(**{"temperature": 0.0, "max_tokens": 16, **fields}, output_kind=kind)
