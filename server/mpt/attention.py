"""Which vLLM attention backend computes MPT's ALiBi right, per GPU, and the checks that keep it so.

MPT has no position embedding: its positions are ALiBi biases added inside attention. vLLM 0.32
picks a backend without knowing that (its `AttentionSelectorConfig` has no ALiBi field), so the
server chooses one itself and hands it to vLLM as engine arguments (`attention_config`); the
environment variables older vLLMs read (`VLLM_ATTENTION_BACKEND`, `VLLM_FLASH_ATTN_VERSION`) no
longer exist. What vLLM 0.32's code says, per backend (paths under `vllm/`):

- FLASHINFER keeps the slopes it is given and never passes them to a kernel
  (`v1/attention/backends/flashinfer.py`): wrong text, no error. It ranks first on sm100 and
  second elsewhere (`platforms/cuda.py`, `_get_backend_priorities`), and takes head sizes
  64/128/256/512 only, so MPT-30B's 112 skips it but other MPT shapes would not.
- FLEX_ATTENTION raises "does not support alibi slopes": loud, but no use.
- FLASH_ATTN: FA3 and FA4 refuse ALiBi, so the layer drops to FA2 (`fa_utils.py`,
  `get_flash_attn_version(requires_alibi=True)`). Its metadata builder asks for the version
  without ALiBi, so on sm90 it plans for FA3: scheduler metadata and descales, and split-KV
  (`num_splits` 32) under full CUDA graphs (`flash_attn.py`, `aot_schedule`). FA2's argument
  guards (`vllm_flash_attn/flash_attn_interface.py`) then raise NotImplementedError at warm-up
  or graph capture: vLLM's default dies on H100/H200 (tests/mpt/test_attention.py replays it).
  Pinning `flash_attn_version=2` makes builder and layer agree. On sm80/86/89 FA2 is the only
  FlashAttention there is, so both already agree there. The builder's CUDA-graph support
  (`_cudagraph_support`) is fixed once, when its module is imported, from the version vLLM's
  config gives at that moment: FA3's "ALWAYS" would wrongly cover FA2 if the module were ever
  imported before the pin is in force (it is not, in 0.32; the load-time check below refuses
  that state if it ever happens).
- TRITON_ATTN applies ALiBi inside its kernel (`v1/attention/ops/triton_unified_attention.py`,
  `apply_alibi_to_score`), takes any head size from 32 and every dtype and capability, has no
  FlashAttention version to disagree with, and supports full CUDA graphs for every batch.
  Measured against a PyTorch ALiBi reference on an H200 (sm90), bf16, head sizes 112 and 128,
  paged KV, for prefill, chunked prefill and both decode kernels: largest error 1.5e-2 (bf16
  rounding: 1.8e-3 in fp16), against 2.5-5 when ALiBi is left out (bench/triton_alibi.py).
- CPU_ATTN (vLLM's CPU build) applies ALiBi; it is the only backend there.

So, with `--attention-backend auto`:

| GPUs | capability | backend |
| --- | --- | --- |
| A100 | sm80 | FLASH_ATTN, FA2 pinned |
| A10 | sm86 | FLASH_ATTN, FA2 pinned |
| L4, L40S | sm89 | FLASH_ATTN, FA2 pinned |
| H100, H200 | sm90 | TRITON_ATTN |
| B200 | sm100 | TRITON_ATTN |

On Ampere and Ada, FA2 is vLLM's own first choice, native ALiBi, and faster than the Triton
kernel at prefill. On Hopper, ALiBi rules out the FA3 path vLLM's sm90 FlashAttention is built
around, FA2 uses none of Hopper's features either, and TRITON_ATTN is the path measured correct
there, free of the version coupling above; `--attention-backend FLASH_ATTN` (FA2 pinned) stays
available. On Blackwell FlashInfer ranks first and FA4 cannot do ALiBi: TRITON_ATTN. A float32
model or a head size FlashAttention cannot take (not a multiple of 8, above 256) gets
TRITON_ATTN everywhere. Models without ALiBi keep vLLM's own choice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

AUTO = "auto"
TRITON = "TRITON_ATTN"
FLASH = "FLASH_ATTN"
CPU = "CPU_ATTN"
SELECTABLE = (AUTO, TRITON, FLASH, CPU)

# Backends vLLM could pick that would not apply MPT's ALiBi, and why.
IGNORES_ALIBI = {
    "FLASHINFER": "keeps the ALiBi slopes but never applies them (wrong text, no error)",
    "TRITON_FLASHINFER": "runs FlashInfer's kernels, which never apply ALiBi",
    "FLEX_ATTENTION": "does not support ALiBi (it raises at load)",
}

SIXTEEN_BIT = ("bfloat16", "float16")


class AttentionRefused(ValueError):
    """A backend choice that cannot serve this model here: the message says what would."""


@dataclass(frozen=True)
class Target:
    """Where the engine runs: a CUDA GPU of some capability, vLLM's CPU build, or elsewhere."""

    kind: Literal["cuda", "cpu", "other"]
    capability: tuple[int, int] | None = None

    def __str__(self) -> str:
        if self.kind == "cuda" and self.capability:
            return f"a CUDA GPU of compute capability {self.capability[0]}.{self.capability[1]}"
        return "a CPU host" if self.kind == "cpu" else "this platform"


@dataclass(frozen=True)
class ModelAttention:
    head_size: int
    alibi: bool
    dtype: str  # the dtype the model computes in: bfloat16, float16 or float32


@dataclass(frozen=True)
class AttentionChoice:
    backend: str | None  # vLLM's AttentionBackendEnum name; None leaves the choice to vLLM
    flash_attn_version: int | None

    def engine_arguments(self) -> dict[str, Any]:
        if self.backend is None:
            return {}
        config: dict[str, Any] = {"backend": self.backend}
        if self.flash_attn_version is not None:
            config["flash_attn_version"] = self.flash_attn_version
        return {"attention_config": config}


def normalise_backend_setting(value: str) -> str:
    """The `--attention-backend` value in vLLM's spelling; refuses names that cannot do ALiBi."""
    name = value.strip()
    if name.lower() == AUTO:
        return AUTO
    name = name.upper()
    if name in SELECTABLE:
        return name
    why = IGNORES_ALIBI.get(name, "is not one this server vouches for")
    raise ValueError(f"{name} {why}; for MPT's ALiBi positions choose one of {', '.join(SELECTABLE)}")


def _flash_problem(target: Target, model: ModelAttention) -> str | None:
    if target.kind != "cuda":
        return "FlashAttention runs on CUDA GPUs only"
    if target.capability is not None and target.capability < (8, 0):
        return "FlashAttention needs compute capability 8.0 or newer"
    if model.head_size % 8 or model.head_size > 256:
        return f"FlashAttention 2 takes head sizes that are multiples of 8 up to 256, not {model.head_size}"
    if model.dtype not in SIXTEEN_BIT:
        return f"FlashAttention computes in bfloat16 or float16, not {model.dtype}"
    return None


def _triton_problem(target: Target, model: ModelAttention) -> str | None:
    if target.kind != "cuda":
        return "vLLM runs its Triton attention on GPUs here; CPU hosts use CPU_ATTN"
    if model.head_size < 32:
        return f"the Triton kernel takes head sizes from 32, not {model.head_size}"
    return None


def _cpu_problem(target: Target, model: ModelAttention) -> str | None:
    return None if target.kind == "cpu" else "CPU_ATTN is vLLM's CPU build's attention"


_PROBLEMS = {TRITON: _triton_problem, FLASH: _flash_problem, CPU: _cpu_problem}


def safe_backends(target: Target, model: ModelAttention) -> list[str]:
    return [name for name, problem in _PROBLEMS.items() if problem(target, model) is None]


def _pinned(backend: str, model: ModelAttention) -> AttentionChoice:
    # FlashAttention with ALiBi: FA2 for the metadata builder and the layer alike.
    version = 2 if backend == FLASH and model.alibi else None
    return AttentionChoice(backend, version)


def auto_choice(target: Target, model: ModelAttention) -> AttentionChoice:
    """The server's choice (the table in this module's docstring)."""
    if not model.alibi or target.kind != "cuda":
        return AttentionChoice(None, None)  # vLLM's own; on CPU, its CPU attention
    capability = target.capability or (0, 0)
    if capability[0] == 8 and _flash_problem(target, model) is None:
        return _pinned(FLASH, model)
    if _triton_problem(target, model) is None:
        return AttentionChoice(TRITON, None)
    raise AttentionRefused(
        f"no vLLM attention backend applies ALiBi at head size {model.head_size} on {target}"
    )


def choose_attention(requested: str, target: Target, model: ModelAttention) -> AttentionChoice:
    """`requested` (a `normalise_backend_setting` value) checked against the model and GPU."""
    if requested == AUTO:
        return auto_choice(target, model)
    if target.kind == "other":
        return _pinned(requested, model)  # ROCm, XPU: vLLM validates; the model checks at load
    problem = _PROBLEMS[requested](target, model)
    if problem is not None:
        safe = ", ".join([AUTO, *safe_backends(target, model)])
        raise AttentionRefused(
            f"--attention-backend {requested} cannot serve this model (head size "
            f"{model.head_size}, {model.dtype}) on {target}: {problem}. Safe here: {safe}"
        )
    return _pinned(requested, model)


def serving_dtype(dtype_setting: str, config: dict[str, Any]) -> str:
    """The dtype vLLM will compute in, as far as attention cares (16-bit or float32)."""
    aliases = {"half": "float16", "bf16": "bfloat16", "fp16": "float16", "float": "float32"}
    dtype = aliases.get(dtype_setting, dtype_setting)
    if dtype != AUTO:
        return dtype
    quantization = (config.get("quantization_config") or {}).get("quant_method", "")
    if quantization in ("awq", "gptq"):
        return "float16"  # their kernels compute in float16
    stored = config.get("torch_dtype") or config.get("dtype") or "float32"
    # vLLM's "auto" serves a float32 checkpoint in bfloat16 on GPUs.
    return stored if stored in SIXTEEN_BIT else "bfloat16"


def model_attention(model_dir: Path, dtype_setting: str) -> ModelAttention:
    """The model's attention needs, from config.json (MPT: ALiBi; other models: none)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    dtype = serving_dtype(dtype_setting, config)
    if config.get("model_type") == "mpt":
        from server.mpt.config import MptSpec

        return ModelAttention(MptSpec.from_config(config).head_dim, True, dtype)
    heads = config.get("num_attention_heads") or 1
    head_size = config.get("head_dim") or (config.get("hidden_size") or 0) // heads
    return ModelAttention(int(head_size), False, dtype)


def attention_engine_arguments(
    requested: str, model_dir: Path, dtype_setting: str, target: Target
) -> dict[str, Any]:
    """vLLM engine arguments for the attention backend on `target` (`{}` leaves vLLM's choice)."""
    model = model_attention(model_dir, dtype_setting)
    return choose_attention(requested, target, model).engine_arguments()
