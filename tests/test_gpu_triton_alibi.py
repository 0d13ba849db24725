"""TRITON_ATTN, the backend the server picks on H100/H200/B200, applies MPT's ALiBi right.

vLLM's own Triton unified-attention kernel runs here under Triton's interpreter
(TRITON_INTERPRET=1, CPU tensors) on a paged KV cache laid out as the backend lays it out, with
MPT-30B's head size (112) and MPT-30B's slopes, and is compared with a direct PyTorch
computation of MPT's attention: prefill with and without earlier context, and decode through
both the 3D (split softmax) and the 2D kernel. In float32 the two agree to rounding (about 3e-6);
leaving ALiBi out moves the output by more than 2 (tests/support/triton_alibi.py). The same
harness ran on an H200 in bf16 and fp16 (numbers in server/gpu/attention.py).
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.server import REPO_ROOT


def test_vllm_triton_kernel_applies_mpt_alibi_at_head_size_112(tmp_path):
    report = tmp_path / "report.json"
    run = subprocess.run(
        [sys.executable, "-m", "tests.support.triton_alibi", "--device", "cpu", "--head-sizes", "112",
         "--json-out", str(report)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert report.is_file(), run.stdout + run.stderr[-4000:]
    results = json.loads(report.read_text())["results"]
    print(run.stdout)
    assert {(r["batch"], r["kernel"]) for r in results} == {("prefill", "2d"), ("decode_3d", "3d"), ("decode_2d", "2d")}
    for result in results:
        assert result["head_size"] == 112 and result["dtype"] == "float32"
        assert result["max_abs_error"] <= 1e-4, result
        assert result["error_without_alibi"] > 1.0, result  # the check can tell ALiBi from none
    assert run.returncode == 0, run.stderr[-4000:]
