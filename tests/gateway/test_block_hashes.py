"""docs/production.md's block hashes (harness/kv_blocks.py, what a router computes) are vLLM's own
for `--prefix-caching-hash-algo sha256_cbor`: checked here against vLLM's functions, and on a real
engine's KV events in tests/gateway/test_backend.py."""

from __future__ import annotations

import random

import pytest

from harness.kv_blocks import block_hashes


@pytest.mark.parametrize("block_size", [16, 128])
def test_the_documented_hashes_are_vllms(block_size):
    from vllm.utils.hashing import get_hash_fn_by_name
    from vllm.v1.core import kv_cache_utils

    hash_fn = get_hash_fn_by_name("sha256_cbor")
    kv_cache_utils.init_none_hash(hash_fn)  # as the engine does at start, from PYTHONHASHSEED
    rng = random.Random(block_size)
    token_ids = [rng.randrange(49152) for _ in range(3 * block_size + block_size // 2)]
    parent, expected = None, []
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = kv_cache_utils.hash_block_tokens(hash_fn, parent, token_ids[start:start + block_size])
        expected.append(kv_cache_utils.maybe_convert_block_hash(parent))
    assert block_hashes(token_ids, block_size) == expected
    assert len(expected) == 3  # the half block at the end is never hashed
