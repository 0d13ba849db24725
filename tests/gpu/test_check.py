"""`make gpu-check`'s script runs here in its CPU mode, so it cannot rot between GPU runs.

`python -m bench.gpu_check --device cpu` writes a tiny MPT with MPT-30B's head size (112), serves
it with the real server on vLLM's CPU build, and compares teacher-forced log-probs and greedy
tokens with transformers; the report must say it passed, with float32's agreement.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness.server import REPO_ROOT


@pytest.mark.engine
def test_gpu_check_cpu_mode_serves_a_tiny_mpt_and_matches_transformers(tmp_path, neox_tokenizer_file):
    out = tmp_path / "report"
    run = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--out", str(out),
         "--tokenizer", str(neox_tokenizer_file)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] and report["device"] == "cpu"
    (case,) = report["tiny"]
    assert case["head_size"] == 112 and case["dtype"] == "float32"
    assert case["max_logprob_difference"] <= 1e-3
    assert case["greedy_tokens_agreeing"] == "48/48" and case["concurrent_streams"] == 3
    assert "| head112 | 112 | 1 | float32 |" in (out / "report.md").read_text()
    assert not list(out.glob(".report*"))  # no half-written files left


def test_on_gpus_one_case_decodes_eight_streams_through_the_2d_kernel():
    """The 2-head cases decode through TRITON_ATTN's 3D kernel only; the TP2-rank-shaped case must
    exceed the 3D threshold vLLM's metadata builder sets under CUDA graphs."""
    from bench.gpu_check import PROMPTS, tiny_cases
    from bench.gpu_kernels import CAPTURE_SIZES
    from bench.triton_alibi import triton_3d_threshold

    cases = tiny_cases("cuda", gpus=1)
    wide = cases["head112-32heads-2d"]
    assert (wide["d_model"] // wide["n_heads"], wide["n_heads"]) == (112, 32)
    assert len(wide["prompts"]) >= 8 > triton_3d_threshold(32, CAPTURE_SIZES) == 4
    assert all(len(case.get("prompts", PROMPTS)) <= triton_3d_threshold(case["n_heads"], CAPTURE_SIZES)
               for name, case in cases.items() if name != "head112-32heads-2d")
    assert triton_3d_threshold(16, CAPTURE_SIZES) == 8  # a TP4 rank: threshold on a capture size
    assert triton_3d_threshold(3, None) == 42  # eager: 128 // kv heads as is
