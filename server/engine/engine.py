"""The vLLM engine as the server sees it: start, tokenize, generate, abort, health, shut down.

vLLM's `AsyncLLM` runs in this process; its engine core (scheduler, model, KV cache) runs in a
child process that vLLM spawns. Only `server/engine/` and the model plugin (`server/models/`)
import vLLM, so the vLLM API surface the server depends on is written down in one place.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from server.engine.args import engine_args
from server.engine.errors import EngineDead, as_rejection
from server.engine.outputs import EngineOutput
from server.settings import Settings

if TYPE_CHECKING:  # vLLM's types, for annotations only: importing vLLM takes seconds
    from vllm.sampling_params import SamplingParams
    from vllm.tokenizers import TokenizerLike
    from vllm.v1.engine.async_llm import AsyncLLM

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """What the HTTP layer needs to know about the loaded model. (The name it is served under is
    the server's, `ServerState.served_name`: known before the engine loads.)"""

    max_model_len: int
    vocab_size: int
    bos_token_id: int | None
    # Sampling defaults from the checkpoint's generation_config.json (temperature, top_p, ...):
    # numbers, by `SamplingArgs` field name.
    sampling_defaults: Mapping[str, float]


def client_error_types() -> tuple[type[Exception], ...]:
    # vLLM splits its errors into client (4xx) and server (5xx) kinds; like vLLM's own
    # server, a ValueError from its request checks is the client's mistake too.
    from vllm.exceptions import VLLMClientError

    return (VLLMClientError, ValueError)


class Engine:
    def __init__(self, llm: AsyncLLM, info: ModelInfo, tokenizer: TokenizerLike) -> None:
        self._llm = llm
        self.info = info
        self._tokenizer = tokenizer

    # --- lifecycle --------------------------------------------------------------------------

    @classmethod
    def start(cls, settings: Settings, model_dir: Path, served_name: str) -> "Engine":
        """Build the engine (blocking: spawns the engine core and loads the weights)."""
        from vllm.v1.engine.async_llm import AsyncLLM

        from server.engine.platform import current_gpu, refuse_unservable_quantization
        from server.gpu.plan import check_at_start

        check_at_start(settings, model_dir, current_gpu())  # GPU hosts: refuse what cannot fit
        refuse_unservable_quantization(model_dir)  # CPU hosts: 4-bit weights need AVX-512's kernel
        started = time.monotonic()
        logger.info("loading model %s (this takes a while for large checkpoints)", model_dir)
        llm = AsyncLLM.from_engine_args(engine_args(settings, model_dir, served_name))
        # The grammar compiler that tool calls check their schemas with (sampling.py) takes
        # seconds to import: here, at start-up, not in the event loop of the first tool request.
        import xgrammar  # noqa: F401
        tokenizer = llm.get_tokenizer()
        model_config = llm.model_config
        info = ModelInfo(
            max_model_len=model_config.max_model_len,
            vocab_size=model_config.get_vocab_size(),
            bos_token_id=tokenizer.bos_token_id,
            sampling_defaults=model_config.get_diff_sampling_param(),
        )
        logger.info(
            "model loaded in %.1f s (max_model_len=%d)", time.monotonic() - started, info.max_model_len
        )
        return cls(llm, info, tokenizer)

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop the engine core process and free its memory; safe to call twice. vLLM waits up to
        `timeout` seconds (its default: 5) for the engine core to exit, then kills it."""
        self._llm.shutdown(timeout=timeout)

    # --- requests --------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        # The prompt formats render the whole prompt, BOS included when wanted: add nothing
        # (`/tokenize` may ask for the tokenizer's own additions).
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def detokenize(self, token_ids: list[int]) -> str:
        """The text of token ids, special tokens included (what `/detokenize` answers)."""
        return self._tokenizer.decode(token_ids)

    def token_strings(self, token_ids: list[int]) -> list[str]:
        """The tokenizer's own string for each id (byte-level marks such as `Ġ` kept)."""
        return self._tokenizer.convert_ids_to_tokens(token_ids)

    def token_text(self, token_id: int) -> str:
        """The text of one token as OpenAI's logprobs show it (bytes decoded, lossy at UTF-8 splits)."""
        return self._tokenizer.decode([token_id])

    def stream(
        self, token_ids: list[int], prompt_text: str | None, params: SamplingParams, request_id: str
    ) -> AsyncIterator[EngineOutput]:
        """vLLM's own stream of `RequestOutput`s for one request, unwrapped, so each output
        costs the consumer one await; pass what it raises through `translate_error`.

        An `abort` ends the stream with a last output whose finish reason is "abort" (vLLM's
        output processor puts one in the request's queue), so a consumer waiting on it wakes.
        """
        from vllm.inputs.engine import tokens_input

        return self._llm.generate(tokens_input(token_ids, prompt=prompt_text), params, request_id)

    def translate_error(self, error: BaseException) -> Exception | None:
        """The server's exception for one vLLM raised while generating, or None if not vLLM's."""
        from vllm.v1.engine.exceptions import EngineDeadError

        if isinstance(error, EngineDeadError):
            return EngineDead("the inference engine stopped")
        if isinstance(error, client_error_types()):
            return as_rejection(error)
        return None

    async def abort(self, request_id: str) -> None:
        await self._llm.abort(request_id)

    # --- state -----------------------------------------------------------------------------

    @property
    def dead(self) -> bool:
        return bool(self._llm.errored)
