"""The accelerator this process runs on, as vLLM's platform layer reports it.

The GPU decisions themselves (`server.gpu`) are pure functions of a `Target` or a `Gpu`; this
module is where those come from on a real host (NVML queries: no CUDA context is created).
"""

from __future__ import annotations

from server.gpu.attention import Target
from server.gpu.catalog import Gpu, bandwidth_for_driver_name


def current_target() -> Target:
    from vllm.platforms import current_platform

    if current_platform.is_cuda():
        capability = current_platform.get_device_capability()
        return Target("cuda", (capability.major, capability.minor))
    return Target("cpu") if current_platform.is_cpu() else Target("other")


def current_gpu() -> Gpu | None:
    """The first visible CUDA GPU, with its spec-sheet bandwidth when the catalog knows it."""
    from vllm.platforms import current_platform

    if not current_platform.is_cuda():
        return None
    name = current_platform.get_device_name()
    capability = current_platform.get_device_capability()
    return Gpu(
        "this", name, current_platform.get_device_total_memory(), bandwidth_for_driver_name(name),
        (capability.major, capability.minor),
    )
