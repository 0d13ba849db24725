"""vLLM's Triton unified-attention kernel (the TRITON_ATTN backend) against a plain PyTorch ALiBi.

The server serves MPT on CUDA with TRITON_ATTN (server/mpt/attention.py says why), so the one
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

Its command line is bench/gpu_kernels.py (numerics at 8k for both TP-2 ranks' slopes, CUDA graphs,
a speed sweep), which also runs on CPU under the interpreter at small sizes (the tests).
"""

from __future__ import annotations

import enum
import importlib.util
import itertools
import logging
import math
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KERNEL_FILES = ("triton_attention_helpers", "triton_unified_attention")
BLOCK_SIZE = 16  # vLLM's default KV block size on CUDA
MIN_LAUNCH_GRID_SIZE_2D = 128  # TritonAttentionMetadataBuilder: 3D threshold = this // kv heads
NUM_PAR_SOFTMAX_SEGMENTS = 16


def alibi_slopes(n_heads: int, alibi_bias_max: float = 8.0) -> list[float]:
    """MPT's slopes (server.mpt.config.alibi_slopes; repeated so this file runs alone)."""
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
    slopes: str = ""  # whose ALiBi slopes (for example "rank 1 of 2")


def triton_3d_threshold(kv_heads: int, capture_sizes: list[int] | None = None) -> int:
    """The most decode sequences TRITON_ATTN sends to its 3D kernel: vLLM 0.32's metadata builder
    takes 128 // kv heads, moved to the nearest CUDA-graph capture size when graphs are on."""
    threshold = MIN_LAUNCH_GRID_SIZE_2D // kv_heads
    return min(capture_sizes, key=lambda size: abs(size - threshold)) if capture_sizes else threshold


@dataclass
class PagedBatch:
    """One kernel launch's tensors, laid out as vLLM's TRITON_ATTN backend lays them out."""

    batch: Batch
    query: Any
    key_cache: Any
    value_cache: Any
    output: Any
    cu_seqlens: Any
    seq_lens: Any
    block_table: Any
    table: Any  # the block table on the CPU, for the reference
    slopes: Any
    scale: float
    segments: dict
    descale: Any

    @property
    def uses_3d(self) -> bool:
        return max(self.batch.query_lens) == 1 and len(self.batch.seq_lens) <= self.segments["seq_threshold_3D"]


def paged_batch(batch: Batch, *, num_heads: int, head_size: int, slopes, dtype, device: str, seed: int = 0,
                threshold_3d: int | None = None, blocks_per_row: int | None = None) -> PagedBatch:
    """Random queries and a random paged KV cache with shuffled block tables for `batch`.

    `blocks_per_row` reserves room for longer sequences than the batch's own (CUDA-graph replays
    grow them in place); `threshold_3d` is the builder's 3D threshold (default: eager's).
    """
    import torch

    generator = torch.Generator(device="cpu").manual_seed(seed)
    # Drawn where they live: a sweep's 64 × 8k-token cache is gigabytes.
    on_device = torch.Generator(device=device).manual_seed(seed)
    rows = [blocks_per_row or math.ceil(s / BLOCK_SIZE) for s in batch.seq_lens]
    num_blocks = sum(rows) + 3  # a few never used
    # vLLM's TRITON_ATTN layout: [blocks, kv heads, block, 2 * head], viewed block-major.
    kv_cache = torch.randn(num_blocks, num_heads, BLOCK_SIZE, 2 * head_size, generator=on_device, device=device,
                           dtype=dtype)
    key_cache, value_cache = kv_cache.transpose(1, 2).split(head_size, dim=-1)
    order = torch.randperm(num_blocks, generator=generator).tolist()
    table = torch.zeros(len(batch.seq_lens), max(rows), dtype=torch.int32)
    for row, count in enumerate(rows):
        table[row, :count] = torch.tensor(order[:count], dtype=torch.int32)
        order = order[count:]
    query = torch.randn(sum(batch.query_lens), num_heads, head_size, generator=on_device, device=device, dtype=dtype)
    threshold = triton_3d_threshold(num_heads) if threshold_3d is None else threshold_3d
    padded = 2 ** math.ceil(math.log2(head_size))
    segm_rows = max(threshold, 1)
    segments = dict(
        seq_threshold_3D=threshold,
        num_par_softmax_segments=NUM_PAR_SOFTMAX_SEGMENTS,
        softmax_segm_output=torch.empty(segm_rows, num_heads, NUM_PAR_SOFTMAX_SEGMENTS, padded, device=device),
        softmax_segm_max=torch.empty(segm_rows, num_heads, NUM_PAR_SOFTMAX_SEGMENTS, device=device),
        softmax_segm_expsum=torch.empty(segm_rows, num_heads, NUM_PAR_SOFTMAX_SEGMENTS, device=device),
    )
    return PagedBatch(
        batch=batch, query=query, key_cache=key_cache, value_cache=value_cache, output=torch.empty_like(query),
        cu_seqlens=torch.tensor([0, *itertools.accumulate(batch.query_lens)], dtype=torch.int32, device=device),
        seq_lens=torch.tensor(batch.seq_lens, dtype=torch.int32, device=device), block_table=table.to(device),
        table=table, slopes=torch.tensor(slopes, dtype=torch.float32, device=device), scale=head_size**-0.5,
        segments=segments, descale=torch.ones(len(batch.seq_lens), num_heads, device=device),
    )


def launch(unified_attention, paged: PagedBatch, output=None) -> None:
    """One launch as TRITON_ATTN's forward makes it (into `output`, default the batch's own)."""
    unified_attention(
        q=paged.query, k=paged.key_cache, v=paged.value_cache,
        out=paged.output if output is None else output, cu_seqlens_q=paged.cu_seqlens,
        max_seqlen_q=max(paged.batch.query_lens), seqused_k=paged.seq_lens, max_seqlen_k=max(paged.batch.seq_lens),
        softmax_scale=paged.scale, causal=True, window_size=(-1, -1), block_table=paged.block_table,
        softcap=0, q_descale=None, k_descale=paged.descale, v_descale=paged.descale,
        alibi_slopes=paged.slopes, **paged.segments,
    )


def reference(q, k, v, slopes, scale, query_len: int, use_alibi: bool = True, heads_at_once: int = 4):
    """MPT's attention for one sequence, in float32: q [Lq, H, D]; k, v [Lk, H, D].

    A few heads at a time, so an 8k-token prefill's scores fit in memory."""
    import torch

    seq_len = k.shape[0]
    q_pos = torch.arange(seq_len - query_len, seq_len, device=q.device)[:, None]
    k_pos = torch.arange(seq_len, device=q.device)[None, :]
    parts = []
    for first in range(0, q.shape[1], heads_at_once):
        heads = slice(first, first + heads_at_once)
        scores = torch.einsum("qhd,khd->hqk", q[:, heads].float(), k[:, heads].float()) * scale
        if use_alibi:
            scores = scores + slopes[heads].float()[:, None, None] * (k_pos - q_pos)
        scores = scores.masked_fill(k_pos > q_pos, float("-inf"))
        parts.append(torch.einsum("hqk,khd->qhd", scores.softmax(dim=-1), v[:, heads].float()))
    return torch.cat(parts, dim=1)


def errors_against_reference(paged: PagedBatch) -> tuple[float, float]:
    """Largest |kernel − reference| with ALiBi, and without it (which must be large)."""
    error = error_plain = 0.0
    start = 0
    _, _, num_heads, head_size = paged.key_cache.shape
    for row, (query_len, seq_len) in enumerate(zip(paged.batch.query_lens, paged.batch.seq_lens)):
        blocks = paged.table[row, : math.ceil(seq_len / BLOCK_SIZE)].tolist()
        keys = paged.key_cache[blocks].reshape(-1, num_heads, head_size)[:seq_len]
        values = paged.value_cache[blocks].reshape(-1, num_heads, head_size)[:seq_len]
        q_rows = paged.query[start : start + query_len]
        got = paged.output[start : start + query_len].float()
        want = reference(q_rows, keys, values, paged.slopes, paged.scale, query_len)
        plain = reference(q_rows, keys, values, paged.slopes, paged.scale, query_len, use_alibi=False)
        error = max(error, (got - want).abs().max().item())
        error_plain = max(error_plain, (got - plain).abs().max().item())
        start += query_len
    return error, error_plain


def run_batch(unified_attention, batch: Batch, *, num_heads: int, head_size: int, slopes,
              dtype, device: str, seed: int = 0, slopes_name: str = "") -> Result:
    import torch

    paged = paged_batch(batch, num_heads=num_heads, head_size=head_size, slopes=slopes, dtype=dtype,
                        device=device, seed=seed)
    started = time.monotonic()
    launch(unified_attention, paged)  # on CUDA this includes Triton's compilation
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.monotonic() - started
    warm_ms = warm_milliseconds(lambda: launch(unified_attention, paged)) if device == "cuda" else None
    error, error_plain = errors_against_reference(paged)
    tolerance = 2e-2 if dtype in (torch.bfloat16, torch.float16) else 1e-4
    return Result(
        batch=batch.name, head_size=head_size, num_heads=num_heads, dtype=str(dtype).removeprefix("torch."),
        kernel="3d" if paged.uses_3d else "2d", max_abs_error=error, tolerance=tolerance,
        error_without_alibi=error_plain, seconds=seconds, warm_ms=warm_ms,
        passed=error <= tolerance and error_plain > 10 * tolerance, slopes=slopes_name,
    )


def warm_milliseconds(launch_once, repeats: int = 20) -> float:
    """The median of `repeats` timed CUDA launches."""
    import torch

    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        launch_once()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]
