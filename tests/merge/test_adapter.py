"""Reading a peft adapter and the command's small parts, tested directly (no engine, no child)."""

from __future__ import annotations

import argparse
import copy

import pytest
import torch

from server.merge.adapter import LoraAdapter, lora_scale, rank_and_alpha
from server.merge.safetensors_writer import OutputTensor, plan_shards
from server.merge.sizes import parse_size
from harness.lora_checkpoints import LINEAR_TARGETS, make_lora_adapter
from harness.tiny_mpt import TinyMpt, build_reference


@pytest.fixture(scope="module")
def model():
    return build_reference(TinyMpt(n_layers=3))


@pytest.mark.parametrize("use_rslora", [False, True])
def test_every_modules_rank_alpha_and_scale_are_peft_s(model, tmp_path, use_rslora):
    """Against the adapter as peft loads it for merge_and_unload. Pattern keys as users write
    them: a full path, a suffix, regexes, and two that overlap (blocks.0's out_proj): peft takes
    the first key that matches in adapter_config.json, which it writes with sorted keys, so a
    reloaded adapter can resolve an overlap unlike the in-memory one that trained; the merge
    follows the file, as peft's merge of a saved adapter does."""
    from peft import PeftModel

    make_lora_adapter(
        model,
        tmp_path,
        r=8,
        lora_alpha=16,
        use_rslora=use_rslora,
        target_modules=LINEAR_TARGETS,
        rank_pattern={"blocks.1.attn.Wqkv": 4, r"ffn\.(up|down)_proj": 2, "transformer.blocks.2.attn.out_proj": 6},
        alpha_pattern={"out_proj": 3, r"blocks\.0\..*": 40},
    )
    peft_model = PeftModel.from_pretrained(copy.deepcopy(model), tmp_path)
    adapter = LoraAdapter.open(tmp_path)
    layers = {
        name: module for name, module in peft_model.base_model.model.named_modules() if hasattr(module, "scaling")
    }
    assert set(adapter.modules) == set(layers) and len(layers) == 12
    for name, layer in layers.items():
        assert rank_and_alpha(adapter.config, name) == (layer.r["default"], layer.lora_alpha["default"]), name
        assert lora_scale(adapter.config, name) == layer.scaling["default"], name
        assert adapter.modules[name].scale == layer.scaling["default"], name
        assert torch.equal(adapter.modules[name].lora_b, layer.lora_B["default"].weight.detach()), name
    # The patterns did pick different ranks, alphas and so scales.
    assert len({layer.scaling["default"] for layer in layers.values()}) >= 4


def test_safetensors_and_bin_adapters_read_alike(model, tmp_path):
    for serialization in (True, False):
        make_lora_adapter(
            model, tmp_path / str(serialization), r=4, target_modules=["Wqkv"], safe_serialization=serialization
        )
    from_safetensors, from_bin = LoraAdapter.open(tmp_path / "True"), LoraAdapter.open(tmp_path / "False")
    assert from_safetensors.weights_path.name == "adapter_model.safetensors"
    assert from_bin.weights_path.name == "adapter_model.bin"
    assert from_safetensors.modules.keys() == from_bin.modules.keys()
    for name, module in from_safetensors.modules.items():
        assert torch.equal(module.lora_a, from_bin.modules[name].lora_a)
        assert torch.equal(module.lora_b, from_bin.modules[name].lora_b)


@pytest.mark.parametrize(
    ("text", "size"),
    [("5GB", 5 * 10**9), ("500MB", 500 * 10**6), ("10GiB", 10 * 2**30), ("1.5gb", 1_500_000_000), ("4096", 4096)],
)
def test_shard_sizes_read_like_transformers(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["5XB", "GB", "-1GB", "0"])
def test_a_bad_shard_size_is_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)


def test_shards_fill_in_order_and_a_large_tensor_stands_alone():
    tensors = [OutputTensor(name, (n,), torch.bfloat16) for name, n in [("a", 30), ("b", 30), ("c", 100), ("d", 10)]]
    shards = plan_shards(tensors, max_shard_bytes=120)  # 60, 60, 200 and 20 bytes
    assert [[t.name for t in shard] for shard in shards] == [["a", "b"], ["c"], ["d"]]
