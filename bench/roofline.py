"""The batch-1 decoding bound: memory bandwidth / bytes read per token.

Decoding one token at batch 1 reads every weight once (the tied embedding too, as the LM head),
so tokens/s cannot exceed bandwidth / weight bytes. Bandwidth is measured the simple way, a
numpy copy of an array much larger than the caches (bytes read + bytes written per second,
best of a few), on one thread: vLLM's CPU backend binds the model to one core on this 2-core
machine (it reserves the other for the front end and scheduler), so one core's bandwidth is
what the model gets. The KV cache and activations are left out: at these context lengths they
are small next to the weights, so the real bound is a little lower.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}
SERVING_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4}


def measure_bandwidth_gbs(array_mib: int = 512, repeats: int = 5) -> float:
    """GB/s of `np.copyto` over `array_mib` MiB (read + write), best of `repeats`."""
    import numpy as np

    count = array_mib * 1024 * 1024 // 8
    source = np.ones(count, dtype=np.float64)
    target = np.empty_like(source)
    np.copyto(target, source)  # fault the pages in before timing
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - started)
    return 2 * source.nbytes / best / 1e9


def safetensors_parameters(model_dir: Path) -> tuple[int, int]:
    """(parameter count, checkpoint bytes) summed over the directory's *.safetensors headers."""
    count = size = 0
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with open(path, "rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(header_len))
        for name, tensor in header.items():
            if name == "__metadata__":
                continue
            numel = 1
            for dim in tensor["shape"]:
                numel *= dim
            count += numel
            size += numel * DTYPE_BYTES[tensor["dtype"]]
    if count == 0:
        raise FileNotFoundError(f"no safetensors weights in {model_dir}")
    return count, size


def roofline(model_dir: Path, serving_dtype: str, batch1_tokens_per_s: float | None,
             batch1_decode_tokens_per_s: float | None, array_mib: int = 512) -> dict[str, Any]:
    params, checkpoint_bytes = safetensors_parameters(model_dir)
    bytes_per_token = params * SERVING_DTYPE_BYTES.get(serving_dtype, 2)
    bandwidth = measure_bandwidth_gbs(array_mib)
    bound = bandwidth * 1e9 / bytes_per_token
    note = None
    if batch1_decode_tokens_per_s and batch1_decode_tokens_per_s > 2 * bound:
        # Tokens reached the client in bursts (an oversubscribed machine delays the front end),
        # so the gaps between them say nothing about decoding speed.
        note = f"1/TPOT was {batch1_decode_tokens_per_s:.0f} tokens/s: bursty delivery, not a decode rate"
        batch1_decode_tokens_per_s = None
    return {
        "note": note,
        "memory_bandwidth_gbs": bandwidth,
        "parameters": params,
        "checkpoint_bytes": checkpoint_bytes,
        "serving_dtype": serving_dtype,
        "bytes_per_token": bytes_per_token,
        "batch1_bound_tokens_per_s": bound,
        # Output tokens / wall at concurrency 1 (prefill and HTTP included) ...
        "batch1_tokens_per_s": batch1_tokens_per_s,
        "batch1_fraction_of_bound": batch1_tokens_per_s / bound if batch1_tokens_per_s else None,
        # ... and the pure decode rate, 1 / median time per output token.
        "batch1_decode_tokens_per_s": batch1_decode_tokens_per_s,
        "batch1_decode_fraction_of_bound": (
            batch1_decode_tokens_per_s / bound if batch1_decode_tokens_per_s else None
        ),
    }
