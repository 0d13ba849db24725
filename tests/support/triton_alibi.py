"""vLLM's Triton unified-attention kernel (the TRITON_ATTN backend) against a plain PyTorch ALiBi.

The server serves MPT on CUDA with TRITON_ATTN (server/gpu/attention.py says why), so the one
GPU computation MPT depends on that the CPU engine never runs is this kernel applying ALiBi. This
harness runs vLLM's own kernel source and compares it with a direct computation of MPT's
attention: softmax(q·k × scale + slope_h × (k_pos − q_pos)) over k_pos ≤ q_pos.

It loads the two kernel files of the installed vLLM (`v1/attention/ops/triton_unified_attention.py`
and `triton_attention_helpers.py`) by path. The handful of vLLM modules they import (envs, logger,
platforms, triton_utils, kv_cache_interface) are replaced by small stand-ins: vLLM's CPU build
turns Triton off in `vllm.triton_utils`, and a GPU host with plain PyTorch has no vLLM at all.
Everything the kernel computes is vLLM's code; the stand-ins only answer "which GPU is this".

Runs on CUDA, or on CPU under Triton's interpreter (`TRITON_INTERPRET=1`, set before Triton is
imported; slow, so keep shapes small there). The KV cache is laid out as vLLM's TRITON_ATTN
backend lays it out (blocks × kv heads × block × 2·head, viewed block-major and split into K and
V), with shuffled block tables; the batches are the three kinds the backend sends:

- prefill: whole prompts, and a chunked-prefill piece that attends to earlier context;
- decode, few sequences: the 3D kernel (softmax split into segments, then reduced);
- decode, many sequences: the 2D kernel.

    python -m tests.support.triton_alibi --device cpu          # interpret mode
    python -m tests.support.triton_alibi --device cuda --json-out report.json
"""

from __future__ import annotations

import argparse
import enum
import importlib.util
import itertools
import json
import logging
import math
import os
import sys
import time
import types
from dataclasses import asdict, dataclass
from pathlib import Path

KERNEL_FILES = ("triton_attention_helpers", "triton_unified_attention")
BLOCK_SIZE = 16  # vLLM's default KV block size on CUDA
MIN_LAUNCH_GRID_SIZE_2D = 128  # TritonAttentionMetadataBuilder: 3D threshold = this // kv heads
NUM_PAR_SOFTMAX_SEGMENTS = 16


def alibi_slopes(n_heads: int, alibi_bias_max: float = 8.0) -> list[float]:
    """MPT's slopes (server.models.mpt_config.alibi_slopes; repeated so this file runs alone)."""
    import torch

    padded = 2 ** math.ceil(math.log2(n_heads))
    m = torch.arange(1, padded + 1, dtype=torch.float32).mul(alibi_bias_max / padded)
    slopes = 1.0 / torch.pow(2, m)
    if padded != n_heads:
        slopes = torch.cat([slopes[1::2], slopes[::2]])[:n_heads]
    return slopes.tolist()


class _KVQuantMode(enum.IntEnum):
    # The values of vllm.v1.kv_cache_interface.KVQuantMode the kernel compares against.
    NONE = 0
    FP8_PER_TENSOR = 1
    INT8_PER_TOKEN_HEAD = 2
    FP8_PER_TOKEN_HEAD = 3
    INT4_PER_TOKEN_HEAD = 4


class _Platform:
    """The two questions the kernel asks vLLM's platform."""

    @staticmethod
    def fp8_dtype():
        import torch

        return torch.float8_e4m3fn

    @staticmethod
    def is_device_capability_family(capability: int) -> bool:
        import torch

        if not torch.cuda.is_available():
            return False
        major, _ = torch.cuda.get_device_capability()
        return major == capability // 10


def _module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    module.__path__ = []  # a package, so submodules can be registered under it
    return module


def load_unified_attention(kernel_dir: Path):
    """vLLM's `unified_attention`, loaded from `kernel_dir` with stand-ins for its imports.

    Call it in a process that does not otherwise use vLLM: the stand-ins take vLLM's names in
    `sys.modules`.
    """
    import triton
    import triton.language as tl

    stand_ins = {
        "vllm": _module("vllm"),
        "vllm.envs": _module("vllm.envs", VLLM_BATCH_INVARIANT=False),
        "vllm.logger": _module("vllm.logger", init_logger=logging.getLogger),
        "vllm.platforms": _module("vllm.platforms", current_platform=_Platform()),
        "vllm.triton_utils": _module("vllm.triton_utils", triton=triton, tl=tl),
        "vllm.v1": _module("vllm.v1"),
        "vllm.v1.kv_cache_interface": _module("vllm.v1.kv_cache_interface", KVQuantMode=_KVQuantMode),
        "vllm.v1.attention": _module("vllm.v1.attention"),
        "vllm.v1.attention.ops": _module("vllm.v1.attention.ops"),
    }
    sys.modules.update(stand_ins)
    loaded = None
    for name in KERNEL_FILES:
        qualified = f"vllm.v1.attention.ops.{name}"
        spec = importlib.util.spec_from_file_location(qualified, kernel_dir / f"{name}.py")
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[qualified] = loaded
        spec.loader.exec_module(loaded)
    return loaded.unified_attention


def installed_kernel_dir() -> Path:
    """The installed vLLM's ops folder, found without importing vLLM."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("vLLM is not installed here: pass --kernel-dir")
    return Path(list(spec.submodule_search_locations)[0]) / "v1" / "attention" / "ops"


@dataclass(frozen=True)
class Batch:
    name: str
    query_lens: tuple[int, ...]
    seq_lens: tuple[int, ...]  # context + query, per sequence


@dataclass
class Result:
    batch: str
    head_size: int
    num_heads: int
    dtype: str
    kernel: str  # "2d" or "3d"
    max_abs_error: float
    tolerance: float
    error_without_alibi: float  # the same output against a reference that forgets ALiBi
    seconds: float  # the first launch (with compilation)
    warm_ms: float | None  # CUDA: the median of later launches
    passed: bool


def default_batches(small: bool) -> list[Batch]:
    if small:  # interpret mode: every program instance runs in Python
        return [
            Batch("prefill", (40, 9), (40, 30)),
            Batch("decode_3d", (1, 1), (70, 33)),
            Batch("decode_2d", (1,) * 18, tuple(range(3, 39, 2))),
        ]
    return [
        Batch("prefill", (1500, 700, 64, 300), (1500, 2100, 64, 4000)),
        Batch("decode_3d", (1, 1), (8192, 1037)),
        Batch("decode_2d", (1,) * 96, tuple(range(100, 8164, 84))),
    ]


def reference(q, k, v, slopes, scale, query_len: int, use_alibi: bool = True):
    """MPT's attention for one sequence, in float32: q [Lq, H, D]; k, v [Lk, H, D]."""
    import torch

    seq_len = k.shape[0]
    q_pos = torch.arange(seq_len - query_len, seq_len, device=q.device)[:, None]
    k_pos = torch.arange(seq_len, device=q.device)[None, :]
    scores = torch.einsum("qhd,khd->hqk", q.float(), k.float()) * scale
    if use_alibi:
        scores = scores + slopes.float()[:, None, None] * (k_pos - q_pos)
    scores = scores.masked_fill(k_pos > q_pos, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(dim=-1), v.float())


def run_batch(unified_attention, batch: Batch, *, num_heads: int, head_size: int, slopes,
              dtype, device: str, seed: int = 0) -> Result:
    import torch

    generator = torch.Generator(device="cpu").manual_seed(seed)
    scale = head_size**-0.5
    blocks_per_seq = [math.ceil(s / BLOCK_SIZE) for s in batch.seq_lens]
    num_blocks = sum(blocks_per_seq) + 3  # a few never used
    # vLLM's TRITON_ATTN layout: [blocks, kv heads, block, 2 * head], viewed block-major.
    kv_cache = torch.randn(num_blocks, num_heads, BLOCK_SIZE, 2 * head_size, generator=generator)
    kv_cache = kv_cache.to(dtype=dtype, device=device)
    key_cache, value_cache = kv_cache.transpose(1, 2).split(head_size, dim=-1)
    order = torch.randperm(num_blocks, generator=generator).tolist()
    table = torch.zeros(len(batch.seq_lens), max(blocks_per_seq), dtype=torch.int32)
    for row, count in enumerate(blocks_per_seq):
        table[row, :count] = torch.tensor(order[:count], dtype=torch.int32)
        order = order[count:]
    total_q = sum(batch.query_lens)
    query = torch.randn(total_q, num_heads, head_size, generator=generator).to(dtype=dtype, device=device)
    output = torch.empty_like(query)
    cu_seqlens = torch.tensor([0, *itertools.accumulate(batch.query_lens)], dtype=torch.int32, device=device)
    seq_lens = torch.tensor(batch.seq_lens, dtype=torch.int32, device=device)
    slopes_t = torch.tensor(slopes, dtype=torch.float32, device=device)
    # What TritonAttentionMetadataBuilder hands the kernel (no CUDA graphs: threshold 128 // H).
    threshold_3d = MIN_LAUNCH_GRID_SIZE_2D // num_heads
    padded = 2 ** math.ceil(math.log2(head_size))
    segm_rows = max(threshold_3d, 1)
    segments = dict(
        seq_threshold_3D=threshold_3d,
        num_par_softmax_segments=NUM_PAR_SOFTMAX_SEGMENTS,
        softmax_segm_output=torch.empty(segm_rows, num_heads, NUM_PAR_SOFTMAX_SEGMENTS, padded, device=device),
        softmax_segm_max=torch.empty(segm_rows, num_heads, NUM_PAR_SOFTMAX_SEGMENTS, device=device),
        softmax_segm_expsum=torch.empty(segm_rows, num_heads, NUM_PAR_SOFTMAX_SEGMENTS, device=device),
    )
    uses_3d = max(batch.query_lens) == 1 and len(batch.seq_lens) <= threshold_3d
    descale = torch.ones(len(batch.seq_lens), num_heads, device=device)
    def launch() -> None:
        unified_attention(
            q=query, k=key_cache, v=value_cache, out=output, cu_seqlens_q=cu_seqlens,
            max_seqlen_q=max(batch.query_lens), seqused_k=seq_lens, max_seqlen_k=max(batch.seq_lens),
            softmax_scale=scale, causal=True, window_size=(-1, -1), block_table=block_table,
            softcap=0, q_descale=None, k_descale=descale, v_descale=descale,
            alibi_slopes=slopes_t, **segments,
        )

    block_table = table.to(device)
    started = time.monotonic()
    launch()  # on CUDA this includes Triton's compilation
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.monotonic() - started
    warm_ms = warm_milliseconds(launch) if device == "cuda" else None
    error = error_plain = 0.0
    start = 0
    for row, (query_len, seq_len) in enumerate(zip(batch.query_lens, batch.seq_lens)):
        blocks = table[row, : blocks_per_seq[row]].tolist()
        keys = key_cache[blocks].reshape(-1, num_heads, head_size)[:seq_len]
        values = value_cache[blocks].reshape(-1, num_heads, head_size)[:seq_len]
        q_rows = query[start : start + query_len]
        got = output[start : start + query_len].float()
        want = reference(q_rows, keys, values, slopes_t, scale, query_len)
        plain = reference(q_rows, keys, values, slopes_t, scale, query_len, use_alibi=False)
        error = max(error, (got - want).abs().max().item())
        error_plain = max(error_plain, (got - plain).abs().max().item())
        start += query_len
    tolerance = 2e-2 if dtype in (torch.bfloat16, torch.float16) else 1e-4
    return Result(
        batch=batch.name, head_size=head_size, num_heads=num_heads, dtype=str(dtype).removeprefix("torch."),
        kernel="3d" if uses_3d else "2d", max_abs_error=error, tolerance=tolerance,
        error_without_alibi=error_plain, seconds=seconds, warm_ms=warm_ms,
        passed=error <= tolerance and error_plain > 10 * tolerance,
    )


def warm_milliseconds(launch, repeats: int = 20) -> float:
    import torch

    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        launch()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--kernel-dir", type=Path, help="folder with vLLM's two kernel files")
    parser.add_argument("--head-sizes", default="112,128")
    parser.add_argument("--dtypes", default=None, help="default: float32 on cpu, bfloat16 on cuda")
    parser.add_argument("--heads", type=int, default=None, help="query heads (default 8 cpu, 32 cuda)")
    parser.add_argument("--model-heads", type=int, default=64, help="slopes of an MPT with this many heads")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before Triton is imported
    import torch

    unified_attention = load_unified_attention(args.kernel_dir or installed_kernel_dir())
    dtypes = [getattr(torch, d) for d in (args.dtypes or ("float32" if args.device == "cpu" else "bfloat16")).split(",")]
    num_heads = args.heads or (8 if args.device == "cpu" else 32)
    # The heads one tensor-parallel rank holds: rank 0 of an MPT with `model_heads` heads.
    slopes = alibi_slopes(args.model_heads)[:num_heads]
    results = []
    for dtype in dtypes:
        for head_size in (int(h) for h in args.head_sizes.split(",")):
            for batch in default_batches(small=args.device == "cpu"):
                result = run_batch(unified_attention, batch, num_heads=num_heads, head_size=head_size,
                                   slopes=slopes, dtype=dtype, device=args.device)
                results.append(result)
                print(
                    f"{result.batch:10s} head {head_size} {result.dtype:9s} {result.kernel}: "
                    f"max |error| {result.max_abs_error:.2e} (tolerance {result.tolerance:.0e}; "
                    f"without ALiBi {result.error_without_alibi:.2f}) first {result.seconds:.3f} s"
                    f"{f', warm {result.warm_ms:.3f} ms' if result.warm_ms is not None else ''} "
                    f"{'ok' if result.passed else 'FAILED'}",
                    flush=True,
                )
    report = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu (TRITON_INTERPRET=1)",
        "capability": list(torch.cuda.get_device_capability()) if args.device == "cuda" else None,
        "torch": torch.__version__,
        "triton": __import__("triton").__version__,
        "results": [asdict(r) for r in results],
    }
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2))
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
