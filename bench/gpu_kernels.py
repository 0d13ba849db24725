"""MPT-30B's attention kernel on an H100/H200, checked and measured without vLLM.

On Hopper the server serves MPT through vLLM's TRITON_ATTN backend (server/mpt/attention.py), whose
Triton unified-attention kernel applies ALiBi. This script needs only PyTorch and Triton: vLLM's
two kernel files are loaded by path (bench/triton_alibi.py), from `--kernel-dir`, else a
`vllm_triton_ops/` folder beside this file, else an installed vLLM. On a GPU host without vLLM:

    mkdir -p bench/vllm_triton_ops && cp <vllm>/v1/attention/ops/triton_{unified_attention,attention_helpers}.py bench/vllm_triton_ops/
    python -m bench.gpu_kernels --out gpu-kernels.json          # about 3 minutes on an H100
    python -m bench.gpu_kernels --device cpu --quick            # the numerics, small, interpreted

Three parts, all on MPT-30B's shapes (head size 112; 64 heads, so 32 per rank at TP 2):

1. numerics: an 8,192-token prefill and decodes over an 8,192-token context (few sequences: the
   3D kernel; eight: the 2D kernel), with rank 0's and rank 1's ALiBi slopes, against a float32
   reference, and against the reference without ALiBi (which must be far off).
2. cuda_graphs: the decode launch captured in a CUDA graph for each capture size from 1 to 64,
   with the 3D threshold and scratch buffers vLLM's metadata builder gives under graphs (captured
   at sequence length 1, as the builder does), then replayed while the sequences grow and shrink
   and compared with eager launches of the same inputs.
3. sweep: decode and prefill for batches 1-64 at contexts 1k/4k/8k: µs per launch, KV bytes
   read per second, TFLOP/s, and that bandwidth as a share of a device copy measured in the same
   run.

It writes JSON (whole, then moved into place) and exits 0 only when parts 1 and 2 passed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

MODEL_HEADS = 64  # MPT-30B
TENSOR_PARALLEL = 2
HEAD_SIZE = 112
CONTEXT = 8192
# vLLM 0.32's default CUDA-graph capture sizes up to 64 (`CompilationConfig`): 1, 2, 4, then by 8.
CAPTURE_SIZES = [1, 2, 4, *range(8, 65, 8)]
SWEEP_BATCHES = (1, 2, 4, 8, 16, 32, 64)
SWEEP_CONTEXTS = (1024, 4096, 8192)
GRAPH_REPLAYS = 6
BESIDE = Path(__file__).resolve().parent / "vllm_triton_ops"


def rank_slopes(rank: int, heads: int | None = None) -> list[float]:
    """The ALiBi slopes tensor-parallel `rank` holds (its first `heads` of them when given)."""
    from bench.triton_alibi import alibi_slopes

    per_rank = MODEL_HEADS // TENSOR_PARALLEL
    return alibi_slopes(MODEL_HEADS)[rank * per_rank : rank * per_rank + (heads or per_rank)]


def attention_flops(query_len: int, seq_len: int, heads: int, head_size: int) -> int:
    """Multiply-adds ×2 of QKᵀ and PV for one sequence: each query row sees its causal keys."""
    context = seq_len - query_len
    pairs = query_len * context + query_len * (query_len + 1) // 2
    return 4 * pairs * heads * head_size


def kv_bytes(seq_len: int, kv_heads: int, head_size: int, element_bytes: int) -> int:
    """K and V of one sequence, read at least once by any launch over it."""
    return 2 * seq_len * kv_heads * head_size * element_bytes


# --- 1. numerics ---------------------------------------------------------------------------------


def numerics(unified_attention, *, device: str, dtype, heads: int, context: int) -> list[dict[str, Any]]:
    from bench.triton_alibi import Batch, run_batch, triton_3d_threshold

    few = triton_3d_threshold(heads)
    batches = [
        Batch(f"prefill_{context}", (context,), (context,)),
        Batch(f"decode_{context}_3d", (1,) * min(2, few), tuple(context - i for i in range(min(2, few)))),
        Batch(f"decode_{context}_2d", (1,) * max(8, few + 1), tuple(context - 3 * i for i in range(max(8, few + 1)))),
    ]
    results = []
    for rank in range(TENSOR_PARALLEL):
        for batch in batches:
            result = run_batch(unified_attention, batch, num_heads=heads, head_size=HEAD_SIZE,
                               slopes=rank_slopes(rank, heads), dtype=dtype, device=device, seed=rank,
                               slopes_name=f"rank {rank} of {TENSOR_PARALLEL}")
            results.append(asdict(result))
            print(f"numerics  {result.slopes} {result.batch:16s} {result.kernel}: max |error| "
                  f"{result.max_abs_error:.2e} (tolerance {result.tolerance:.0e}; without ALiBi "
                  f"{result.error_without_alibi:.2f}) {'ok' if result.passed else 'FAILED'}", flush=True)
    return results


# --- 2. CUDA graphs ------------------------------------------------------------------------------


def graph_lengths(size: int, replay: int, context: int) -> list[int]:
    """Sequence lengths for one replay: they grow, then shrink, and differ within the batch."""
    peak = [context // 8, context // 2, context, context // 4, 17, context - 1][replay % 6]
    return [max(1, peak - 37 * row) for row in range(size)]


def cuda_graphs(unified_attention, *, dtype, heads: int, context: int) -> list[dict[str, Any]]:
    import torch

    from bench.triton_alibi import Batch, launch, paged_batch, triton_3d_threshold

    threshold = triton_3d_threshold(heads, CAPTURE_SIZES)
    results = []
    for size in CAPTURE_SIZES:
        # Captured as the builder captures: one query token each, every sequence length 1.
        paged = paged_batch(Batch(f"graph_{size}", (1,) * size, (1,) * size), num_heads=heads, head_size=HEAD_SIZE,
                            slopes=rank_slopes(0, heads), dtype=dtype, device="cuda", seed=size,
                            threshold_3d=threshold, blocks_per_row=math.ceil(context / 16))
        launch(unified_attention, paged)  # compile before capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            launch(unified_attention, paged)
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(graph):
            launch(unified_attention, paged)
        eager_output = torch.empty_like(paged.output)
        worst = 0.0
        for replay in range(GRAPH_REPLAYS):
            lengths = graph_lengths(size, replay, context)
            paged.seq_lens.copy_(torch.tensor(lengths, dtype=torch.int32))
            paged.query.copy_(torch.randn_like(paged.query))
            graph.replay()
            torch.cuda.synchronize()
            replayed = paged.output.clone()
            paged.batch = Batch(paged.batch.name, paged.batch.query_lens, tuple(lengths))
            launch(unified_attention, paged, output=eager_output)
            torch.cuda.synchronize()
            worst = max(worst, (replayed.float() - eager_output.float()).abs().max().item())
        results.append({"batch": size, "kernel": "2d" if size > threshold else "3d", "replays": GRAPH_REPLAYS,
                        "max_abs_difference": worst, "passed": worst == 0.0})
        print(f"graphs    batch {size:2d} ({results[-1]['kernel']}): replay vs eager max |Δ| {worst:.1e} "
              f"{'ok' if worst == 0.0 else 'FAILED'}", flush=True)
        del graph, paged
    return results


# --- 3. sweep ------------------------------------------------------------------------------------


def copy_bandwidth_gb_s(megabytes: int = 2048) -> float:
    """A device-to-device copy: bytes read plus written per second."""
    import torch

    from bench.triton_alibi import warm_milliseconds

    source = torch.empty(megabytes * 2**20, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    milliseconds = warm_milliseconds(lambda: target.copy_(source), repeats=10)
    return 2 * source.numel() / (milliseconds / 1000) / 1e9


def sweep(unified_attention, *, dtype, heads: int) -> dict[str, Any]:
    import torch

    from bench.triton_alibi import Batch, launch, paged_batch, warm_milliseconds

    element = torch.tensor([], dtype=dtype).element_size()
    copy_gb_s = copy_bandwidth_gb_s()
    rows = []
    for phase in ("decode", "prefill"):
        for context in SWEEP_CONTEXTS:
            for batch_size in SWEEP_BATCHES:
                query_len = 1 if phase == "decode" else context
                batch = Batch(f"{phase}_{batch_size}x{context}", (query_len,) * batch_size, (context,) * batch_size)
                paged = paged_batch(batch, num_heads=heads, head_size=HEAD_SIZE, slopes=rank_slopes(0, heads),
                                    dtype=dtype, device="cuda")
                launch(unified_attention, paged)
                milliseconds = warm_milliseconds(lambda: launch(unified_attention, paged), repeats=5 if phase == "prefill" else 20)
                seconds = milliseconds / 1000
                kv_gb_s = batch_size * kv_bytes(context, heads, HEAD_SIZE, element) / seconds / 1e9
                rows.append({
                    "phase": phase, "batch": batch_size, "context": context, "us": round(milliseconds * 1000, 1),
                    "kv_gb_s": round(kv_gb_s, 1),
                    "tflop_s": round(batch_size * attention_flops(query_len, context, heads, HEAD_SIZE) / seconds / 1e12, 2),
                    "share_of_copy": round(kv_gb_s / copy_gb_s, 3),
                })
                print(f"sweep     {phase:7s} batch {batch_size:2d} context {context:5d}: {rows[-1]['us']:9.1f} µs "
                      f"{rows[-1]['kv_gb_s']:7.1f} GB/s ({rows[-1]['share_of_copy']:.0%} of copy) "
                      f"{rows[-1]['tflop_s']:6.2f} TFLOP/s", flush=True)
                del paged
                torch.cuda.empty_cache()
    return {"copy_gb_s": round(copy_gb_s, 1), "rows": rows}


# --- the command ---------------------------------------------------------------------------------


def kernel_dir(given: Path | None) -> Path:
    from bench.triton_alibi import installed_kernel_dir

    if given is not None:
        return given
    return BESIDE if BESIDE.is_dir() else installed_kernel_dir()


def write_json(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w") as stream:
        json.dump(report, stream, indent=2)
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--kernel-dir", type=Path, help="folder with vLLM's two Triton attention files")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default=None,
                        help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--quick", action="store_true",
                        help="numerics only, 8 heads per rank and a 96-token context (what the interpreter can run)")
    parser.add_argument("--out", type=Path, default=Path("gpu-kernels.json"))
    args = parser.parse_args(argv)
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before Triton is imported
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu-kernels: no CUDA device is visible (--device cpu --quick runs the numerics interpreted)",
              file=sys.stderr)
        return 2
    from bench.triton_alibi import load_unified_attention

    unified_attention = load_unified_attention(kernel_dir(args.kernel_dir))
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device == "cuda" else "float32"))
    heads = 8 if args.quick else MODEL_HEADS // TENSOR_PARALLEL
    context = 96 if args.quick else CONTEXT
    started = time.monotonic()
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu (TRITON_INTERPRET=1)",
        "capability": list(torch.cuda.get_device_capability()) if args.device == "cuda" else None,
        "torch": torch.__version__, "triton": __import__("triton").__version__,
        "dtype": str(dtype).removeprefix("torch."), "head_size": HEAD_SIZE, "heads_per_rank": heads,
        "context": context,
    }
    report["numerics"] = numerics(unified_attention, device=args.device, dtype=dtype, heads=heads, context=context)
    if args.device == "cuda" and not args.quick:
        report["cuda_graphs"] = cuda_graphs(unified_attention, dtype=dtype, heads=heads, context=context)
        report["sweep"] = sweep(unified_attention, dtype=dtype, heads=heads)
    else:
        report["not_run"] = {"cuda_graphs": "needs a CUDA device and no --quick", "sweep": "needs a CUDA device and no --quick"}
    report["seconds"] = round(time.monotonic() - started, 1)
    report["passed"] = all(r["passed"] for r in report["numerics"] + report.get("cuda_graphs", []))
    write_json(args.out, report)
    print(f"gpu-kernels: {'passed' if report['passed'] else 'FAILED'} in {report['seconds']} s; report in {args.out}",
          flush=True)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
