"""The prefix-block hashes of docs/production.md ("Many replicas"), from scratch (no
vLLM): what a router computes from a render route's `token_ids` to match the engine's
`BlockStored` events under `--prefix-caching-hash-algo sha256_cbor`."""

from __future__ import annotations

import hashlib
import os

import cbor2

# vLLM's seed of the first block's parent when PYTHONHASHSEED is not set (kv_cache_utils.py).
DEFAULT_NONE_HASH_SEED = "vllm-none-hash"


def sha256_cbor(value: object) -> bytes:
    return hashlib.sha256(cbor2.dumps(value, canonical=True)).digest()


def block_hashes(token_ids: list[int], block_size: int) -> list[int]:
    """One hash per full block, chained, as the events carry them (the digest's low 64 bits)."""
    parent = sha256_cbor(os.environ.get("PYTHONHASHSEED", DEFAULT_NONE_HASH_SEED))
    hashes = []
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = sha256_cbor((parent, tuple(token_ids[start:start + block_size]), None))
        hashes.append(int.from_bytes(parent, "big") & ((1 << 64) - 1))
    return hashes
