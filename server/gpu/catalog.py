"""Common NVIDIA GPUs: memory, memory bandwidth and compute capability.

Bandwidth and capability are the vendor's spec-sheet figures. Memory is what the driver reports
as the card's total (nvidia-smi's `memory.total`, which `torch.cuda.mem_get_info` and vLLM's
`--gpu-memory-utilization` share start from): a spec sheet's "80 GB" HBM part shows 79.6 GiB,
a "24 GB" GDDR6 card 22.5 GiB, because the driver keeps a little. The H200's figure was read on
an H200 here; the others are the totals those cards report.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 2**20
GIB = 2**30


@dataclass(frozen=True)
class Gpu:
    key: str  # what `plan --gpu` takes
    name: str
    memory_bytes: int
    bandwidth_tbs: float | None  # TB/s (10^12 bytes per second); None when unknown
    capability: tuple[int, int]

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GIB

    @property
    def capability_text(self) -> str:
        return f"{self.capability[0]}.{self.capability[1]}"


def _gpu(key: str, name: str, memory_mib: int, bandwidth_tbs: float, capability: tuple[int, int]) -> Gpu:
    return Gpu(key, name, memory_mib * MIB, bandwidth_tbs, capability)


CATALOG: dict[str, Gpu] = {
    gpu.key: gpu
    for gpu in (
        _gpu("a10", "A10 24GB", 23028, 0.600, (8, 6)),
        _gpu("l4", "L4 24GB", 23034, 0.300, (8, 9)),
        _gpu("l40s", "L40S 48GB", 46068, 0.864, (8, 9)),
        _gpu("a100-40gb", "A100 SXM 40GB", 40960, 1.555, (8, 0)),
        _gpu("a100-80gb", "A100 SXM 80GB", 81920, 2.039, (8, 0)),
        _gpu("h100-sxm", "H100 SXM 80GB", 81559, 3.35, (9, 0)),
        _gpu("h100-pcie", "H100 PCIe 80GB", 81559, 2.0, (9, 0)),
        _gpu("h200", "H200 141GB", 143771, 4.8, (9, 0)),
        _gpu("b200", "B200 180GB", 183359, 8.0, (10, 0)),
    )
}

# Substrings of the names the driver gives (torch/NVML), most specific first.
_DRIVER_NAMES = (
    ("H100 PCIe", "h100-pcie"),
    ("H100", "h100-sxm"),
    ("H200", "h200"),
    ("B200", "b200"),
    ("A100-SXM4-40GB", "a100-40gb"),
    ("A100-PCIE-40GB", "a100-40gb"),
    ("A100", "a100-80gb"),
    ("L40S", "l40s"),
    ("L4", "l4"),
    ("A10", "a10"),
)


def find_gpu(key: str) -> Gpu:
    """The catalog entry for `key` (case-insensitive); ValueError naming the known ones."""
    gpu = CATALOG.get(key.lower())
    if gpu is None:
        raise ValueError(f"unknown GPU {key!r}; known: {', '.join(CATALOG)}")
    return gpu


def custom_gpu(memory_gib: float, bandwidth_tbs: float | None, capability: tuple[int, int]) -> Gpu:
    return Gpu("custom", f"GPU with {memory_gib:g} GiB", int(memory_gib * GIB), bandwidth_tbs, capability)


def bandwidth_for_driver_name(driver_name: str) -> float | None:
    """The spec-sheet bandwidth of the GPU the driver names, when the catalog knows it."""
    for fragment, key in _DRIVER_NAMES:
        if fragment in driver_name:
            return CATALOG[key].bandwidth_tbs
    return None


def parse_capability(text: str) -> tuple[int, int]:
    """'9.0' or '90' → (9, 0)."""
    try:
        if "." in text:
            major, minor = text.split(".", 1)
            return int(major), int(minor)
        value = int(text)
        return value // 10, value % 10
    except ValueError:
        raise ValueError(f"compute capability {text!r}: expected a form like 9.0 or 90") from None
