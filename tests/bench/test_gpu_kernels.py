"""TRITON_ATTN, the backend the server picks on H100/H200/B200, applies MPT's ALiBi right, and the
GPU kernel script (bench/gpu_kernels.py) stays runnable between GPU runs.

The script's numerics part runs here under Triton's interpreter (TRITON_INTERPRET=1, CPU tensors):
vLLM's own Triton unified-attention kernel on a paged KV cache laid out as the backend lays it
out, head size 112, with the ALiBi slopes of both MPT-30B tensor-parallel-2 ranks, against a
direct PyTorch computation: prefill, and decode through the 3D (split softmax) and the 2D kernel.
In float32 the two agree to rounding (about 3e-6); leaving ALiBi out moves the output by far more.
Its CUDA-graph and sweep parts need a GPU; their arithmetic is checked here.
"""

from __future__ import annotations

import json
import subprocess
import sys

from harness.server import REPO_ROOT


def test_vllm_triton_kernel_applies_both_tp2_ranks_alibi_at_head_size_112(tmp_path):
    report_file = tmp_path / "kernels.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.gpu_kernels", "--device", "cpu", "--quick", "--out", str(report_file)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert report_file.is_file(), run.stdout + run.stderr[-4000:]
    print(run.stdout)
    report = json.loads(report_file.read_text())
    results = report["numerics"]
    assert {(r["slopes"], r["batch"].split("_")[0], r["kernel"]) for r in results} == {
        (f"rank {rank} of 2", phase, kernel)
        for rank in (0, 1) for phase, kernel in (("prefill", "2d"), ("decode", "3d"), ("decode", "2d"))
    }
    for result in results:
        assert result["head_size"] == 112 and result["dtype"] == "float32"
        assert result["max_abs_error"] <= 1e-4, result
        assert result["error_without_alibi"] > 1e-3, result  # the check can tell ALiBi from none
    assert set(report["not_run"]) == {"cuda_graphs", "sweep"}  # they need a GPU
    assert report["passed"] and run.returncode == 0, run.stderr[-4000:]
    assert [p.name for p in tmp_path.iterdir()] == ["kernels.json"]  # written whole, nothing left beside


def test_the_ranks_slopes_are_the_servers_slopes_split_in_two():
    from bench.gpu_kernels import rank_slopes
    from server.mpt.config import alibi_slopes

    model = alibi_slopes(64)
    assert rank_slopes(0) == model[:32] and rank_slopes(1) == model[32:]
    assert rank_slopes(1, heads=8) == model[32:40]


def test_sweep_arithmetic_counts_causal_pairs_and_both_caches():
    from bench.gpu_kernels import attention_flops, kv_bytes

    # One decode token over 8,192 positions: 8,192 pairs; QKᵀ and PV are 2 flops per pair and dim.
    assert attention_flops(1, 8192, heads=32, head_size=112) == 4 * 8192 * 32 * 112
    # A 4-token prefill: 1 + 2 + 3 + 4 pairs.
    assert attention_flops(4, 4, heads=1, head_size=1) == 4 * 10
    # A chunk of 2 after 3 cached tokens: 2 × 3 + (1 + 2) pairs.
    assert attention_flops(2, 5, heads=1, head_size=1) == 4 * 9
    assert kv_bytes(8192, kv_heads=32, head_size=112, element_bytes=2) == 2 * 8192 * 32 * 112 * 2


def test_graph_replays_grow_shrink_and_differ_within_the_batch():
    from bench.gpu_kernels import CAPTURE_SIZES, GRAPH_REPLAYS, graph_lengths

    peaks = [max(graph_lengths(64, replay, 8192)) for replay in range(GRAPH_REPLAYS)]
    assert peaks[0] < peaks[1] < peaks[2] and peaks[2] > peaks[3] > peaks[4]  # grow, then shrink
    assert max(peaks) <= 8192 and min(min(graph_lengths(64, r, 8192)) for r in range(GRAPH_REPLAYS)) >= 1
    assert len(set(graph_lengths(8, 0, 8192))) == 8
    assert CAPTURE_SIZES[0] == 1 and CAPTURE_SIZES[-1] == 64
