"""The vLLM engine as the server sees it: start, tokenize, generate, abort, health, shut down.

vLLM's `AsyncLLM` runs in this process; its engine core (scheduler, model, KV cache) runs in a
child process that vLLM spawns. Everything else in `server/` talks to the engine through this
module only, so the vLLM API surface we depend on is written down in one place.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """What the HTTP layer needs to know about the loaded model."""

    served_name: str
    aliases: tuple[str, ...]
    path: str
    max_model_len: int
    vocab_size: int
    eos_token_id: int | None
    bos_token_id: int | None
    # Sampling defaults from the checkpoint's generation_config.json (temperature, top_p, ...).
    sampling_defaults: dict[str, Any]


# KV cache on CPU hosts when no size is given: SmolLM2 holds about 180k tokens in it.
DEFAULT_CPU_KV_CACHE_GIB = 4


class EngineDead(RuntimeError):
    """The engine core process is gone; the server cannot generate any more."""


class EngineRejected(ValueError):
    """vLLM refused the request itself (a client mistake its own checks caught): a 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def as_rejection(error: Exception) -> EngineRejected:
    """vLLM's request-validation errors, in the words the client should see."""
    message = str(error.args[0]) if error.args else str(error)
    return EngineRejected(message, getattr(error, "parameter", None))


def client_error_types() -> tuple[type[Exception], ...]:
    # vLLM splits its errors into client (4xx) and server (5xx) kinds; like vLLM's own
    # server, a ValueError from its request checks is the client's mistake too.
    from vllm.exceptions import VLLMClientError

    return (VLLMClientError, ValueError)


class Engine:
    def __init__(self, llm: Any, info: ModelInfo, tokenizer: Any) -> None:
        self._llm = llm
        self.info = info
        self._tokenizer = tokenizer

    # --- lifecycle --------------------------------------------------------------------------

    @classmethod
    def start(cls, settings: Settings, model_dir: Path, served_name: str) -> "Engine":
        """Build the engine (blocking: spawns the engine core and loads the weights)."""
        # vLLM imports are deferred: `--help` and config errors answer without them.
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            # Read by the engine core process, which inherits our environment. Without a size,
            # vLLM's CPU backend reserves --gpu-memory-utilization (90%) of all RAM and refuses
            # to start when that much is not free: a laptop with a browser open fails.
            if settings.cpu_kv_cache_gib is not None:
                os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(settings.cpu_kv_cache_gib)
            else:
                os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(DEFAULT_CPU_KV_CACHE_GIB))
        from server.gpu.attention import attention_engine_arguments
        from server.gpu.plan import check_at_start

        check_at_start(settings, model_dir)  # GPU hosts: refuse what cannot fit, saying why
        engine_args = AsyncEngineArgs(
            model=str(model_dir),
            tokenizer=str(settings.tokenizer) if settings.tokenizer else None,
            served_model_name=served_name,
            tensor_parallel_size=settings.tensor_parallel_size,
            dtype=settings.dtype,
            max_model_len=settings.max_model_len,
            enforce_eager=settings.enforce_eager,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            max_num_seqs=settings.max_num_seqs,
            # vLLM's own Prometheus series (vllm:*) come from its stat loggers.
            disable_log_stats=False,
            trust_remote_code=False,
            # MPT's ALiBi needs a backend that applies it (server/gpu/attention.py).
            **attention_engine_arguments(settings.attention_backend, model_dir, settings.dtype),
        )
        started = time.monotonic()
        logger.info("loading model %s (this takes a while for large checkpoints)", model_dir)
        llm = AsyncLLM.from_engine_args(engine_args)
        tokenizer = llm.get_tokenizer()
        model_config = llm.model_config
        info = ModelInfo(
            served_name=served_name,
            aliases=tuple(settings.model_aliases),
            path=str(model_dir),
            max_model_len=model_config.max_model_len,
            vocab_size=model_config.get_vocab_size(),
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
            sampling_defaults=model_config.get_diff_sampling_param(),
        )
        logger.info(
            "model loaded in %.1f s (max_model_len=%d)", time.monotonic() - started, info.max_model_len
        )
        return cls(llm, info, tokenizer)

    def shutdown(self) -> None:
        """Stop the engine core process and free its memory; safe to call twice."""
        self._llm.shutdown()

    # --- requests --------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        # The prompt formats render the whole prompt, BOS included when wanted: add nothing.
        return self._tokenizer.encode(text, add_special_tokens=False)

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(token_ids))

    def token_text(self, token_id: int) -> str:
        """The text of one token as OpenAI's logprobs show it (bytes decoded, lossy at UTF-8 splits)."""
        return self._tokenizer.decode([token_id])

    async def generate(
        self, token_ids: list[int], prompt_text: str | None, params: Any, request_id: str
    ) -> AsyncIterator[Any]:
        """Stream `RequestOutput`s; cancelling the consumer aborts the engine request."""
        from vllm.inputs.engine import tokens_input
        from vllm.v1.engine.exceptions import EngineDeadError

        prompt = tokens_input(token_ids, prompt=prompt_text)
        try:
            async for output in self._llm.generate(prompt, params, request_id):
                yield output
        except EngineDeadError as error:
            raise EngineDead("the inference engine stopped") from error
        except client_error_types() as error:
            raise as_rejection(error) from error

    async def abort(self, request_id: str) -> None:
        await self._llm.abort(request_id)

    # --- state -----------------------------------------------------------------------------

    @property
    def dead(self) -> bool:
        return bool(self._llm.errored)

    def num_unfinished_requests(self) -> int:
        return self._llm.get_num_unfinished_requests()
