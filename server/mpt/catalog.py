"""Common NVIDIA GPUs: memory, memory bandwidth and compute capability.

Bandwidth, capability and dense bf16 tensor throughput are the vendor's spec-sheet figures (the
sheets print bf16 TFLOP/s "with sparsity": dense is half of that). Memory is what the driver reports
as the card's total (nvidia-smi's `memory.total`, which `torch.cuda.mem_get_info` and vLLM's
`--gpu-memory-utilization` share start from): a spec sheet's "80 GB" HBM part shows 79.6 GiB,
a "24 GB" GDDR6 card 22.5 GiB, because the driver keeps a little. The H200's figure was read on
an H200 here; the others are the totals those cards report.

The host link is what the host-RAM KV tier (`--kv-offload-gib`) moves blocks over: each GPU's own
PCIe x16 link to the CPU, effective host-to-device bandwidth from pinned memory (what CUDA's
bandwidthTest reports), not the spec sheets' bidirectional totals. PCIe Gen4 x16 (A10, L4, L40S,
A100; "64 GB/s" bidirectional on their sheets) is 31.5 GB/s per direction raw, about 25 GB/s
effective; Gen5 x16 (H100, H200, B200; "128 GB/s") is 63 GB/s raw, about 50 GB/s effective.
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
    bf16_tflops: float | None = None  # dense bf16/fp16 tensor TFLOP/s; None when unknown
    host_link_gbs: float | None = None  # effective host-to-device GB/s (10^9 B/s) per GPU

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GIB

    @property
    def capability_text(self) -> str:
        return f"{self.capability[0]}.{self.capability[1]}"


PCIE_GEN4_X16_GBS = 25.0
PCIE_GEN5_X16_GBS = 50.0


def _gpu(
    key: str, name: str, memory_mib: int, bandwidth_tbs: float, capability: tuple[int, int],
    bf16_tflops: float, host_link_gbs: float,
) -> Gpu:
    return Gpu(key, name, memory_mib * MIB, bandwidth_tbs, capability, bf16_tflops, host_link_gbs)


CATALOG: dict[str, Gpu] = {
    gpu.key: gpu
    for gpu in (
        # key, name, memory MiB, TB/s, capability, dense bf16 TFLOP/s, host link GB/s
        _gpu("a10", "A10 24GB", 23028, 0.600, (8, 6), 125, PCIE_GEN4_X16_GBS),
        _gpu("l4", "L4 24GB", 23034, 0.300, (8, 9), 121, PCIE_GEN4_X16_GBS),
        _gpu("l40s", "L40S 48GB", 46068, 0.864, (8, 9), 362, PCIE_GEN4_X16_GBS),
        _gpu("a100-40gb", "A100 SXM 40GB", 40960, 1.555, (8, 0), 312, PCIE_GEN4_X16_GBS),
        _gpu("a100-80gb", "A100 SXM 80GB", 81920, 2.039, (8, 0), 312, PCIE_GEN4_X16_GBS),
        _gpu("h100-sxm", "H100 SXM 80GB", 81559, 3.35, (9, 0), 989, PCIE_GEN5_X16_GBS),
        _gpu("h100-pcie", "H100 PCIe 80GB", 81559, 2.0, (9, 0), 756, PCIE_GEN5_X16_GBS),
        _gpu("h200", "H200 141GB", 143771, 4.8, (9, 0), 989, PCIE_GEN5_X16_GBS),
        _gpu("b200", "B200 180GB", 183359, 8.0, (10, 0), 2250, PCIE_GEN5_X16_GBS),
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


def custom_gpu(
    memory_gib: float, bandwidth_tbs: float | None, capability: tuple[int, int],
    bf16_tflops: float | None = None, host_link_gbs: float | None = None,
) -> Gpu:
    return Gpu(
        "custom", f"GPU with {memory_gib:g} GiB", int(memory_gib * GIB), bandwidth_tbs, capability,
        bf16_tflops, host_link_gbs,
    )


def entry_for_driver_name(driver_name: str) -> Gpu | None:
    """The catalog entry of the GPU the driver names, when the catalog knows it."""
    for fragment, key in _DRIVER_NAMES:
        if fragment in driver_name:
            return CATALOG[key]
    return None


def bandwidth_for_driver_name(driver_name: str) -> float | None:
    """The spec-sheet bandwidth of the GPU the driver names, when the catalog knows it."""
    entry = entry_for_driver_name(driver_name)
    return entry.bandwidth_tbs if entry else None


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
