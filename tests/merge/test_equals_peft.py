"""`airoboros-server merge` writes what peft's `merge_and_unload()` computes, tensor for tensor.

Each case is a tiny MPT (harness/tiny_mpt.py) whose weights are bfloat16 values, and a real
peft LoRA adapter made by `get_peft_model` with non-zero A and B (harness/lora_checkpoints.py).
The reference is the user's workflow with peft: the base loaded in the output dtype, the adapter
applied with `PeftModel.from_pretrained`, `merge_and_unload()`.

The bound, per element, and why: both sides compute the same delta = scale·B·A in float32 (peft
upcasts a bf16/fp16 adapter on the CPU; ours always does) but not necessarily in the same order
(ours is one fused `addmm`, peft's a matmul, a multiply and an add), so the two float32 sums
differ by at most the float32 matmul's error, r·u32·scale·(|B|·|A|); each is then rounded once to
the output dtype, which can put two nearly equal values on either side of a rounding boundary:
one unit in the last place, at most 2·u·|merged| with u the dtype's unit roundoff (eps/2). peft
rounds an embedding's delta to the dtype before adding it, a second rounding worth u·|delta|.
Hence |ours − peft| ≤ u·(2·|peft| + |delta|) + r·u32·scale·(|B|·|A|) + the dtype's subnormal
spacing. Measured: the plain case (scale 2, a power of two) is bit-identical in all three dtypes;
the rsLoRA case (scales like 16/sqrt(8)) differs by one unit in the last place in about 1 in 20,000
linear-layer elements, and in 7.5% of the embedding's (peft's double rounding), all within it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from server.cli import main
from harness.lora_checkpoints import (
    LINEAR_TARGETS,
    assert_equal_within_rounding,
    lora_terms,
    peft_merged_state,
    read_checkpoint,
    shared_case,
)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def merge_in_process(capsys, *args) -> str:
    """The real command, in this process (in a child process: tests/merge/test_served.py,
    tests/merge/test_memory.py and tests/merge/test_refusals_inputs.py)."""
    assert main(["merge", *map(str, args)]) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def plain(tmp_path_factory, neox_tokenizer_file):
    return shared_case("plain", tmp_path_factory, neox_tokenizer_file)


@pytest.fixture(scope="module")
def rslora(tmp_path_factory, neox_tokenizer_file):
    return shared_case("rslora", tmp_path_factory, neox_tokenizer_file)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_bin_shards_merge_equals_peft_merge_and_unload(plain, dtype_name, tmp_path, capsys, record_property):
    dtype = DTYPES[dtype_name]
    merge_in_process(capsys, plain.base, plain.adapter, tmp_path / "merged", "--dtype", dtype_name)
    ours = read_checkpoint(tmp_path / "merged")
    reference = peft_merged_state(plain.model, plain.adapter, dtype)
    largest = assert_equal_within_rounding(ours, reference, lora_terms(plain.peft_model), dtype)
    record_property("largest_difference", largest)
    print(f"{dtype_name}: largest difference from peft {largest:.3g}")


def test_the_adapter_changes_exactly_the_targeted_weights(plain, tmp_path, capsys):
    # Otherwise "equal to peft" could hold for an adapter that does nothing.
    merge_in_process(capsys, plain.base, plain.adapter, tmp_path / "merged", "--dtype", "float32")
    ours = read_checkpoint(tmp_path / "merged")
    base = {name: tensor.detach() for name, tensor in plain.model.state_dict().items() if name != "lm_head.weight"}
    for name, tensor in ours.items():
        targeted = any(name.endswith(f"{target}.weight") for target in LINEAR_TARGETS)
        changed = not torch.equal(tensor, base[name])
        assert changed == targeted, name


def test_rslora_rank_pattern_embedding_and_modules_to_save_equal_peft(rslora, tmp_path, capsys):
    config = json.loads((rslora.adapter / "adapter_config.json").read_text())
    assert config["use_rslora"] and config["rank_pattern"] and config["modules_to_save"] == ["norm_f"]
    assert (rslora.adapter / "adapter_model.bin").is_file()  # the .bin adapter path
    output = merge_in_process(capsys, rslora.base, rslora.adapter, tmp_path / "merged")
    ours = read_checkpoint(tmp_path / "merged")
    reference = peft_merged_state(rslora.model, rslora.adapter, torch.bfloat16)
    largest = assert_equal_within_rounding(ours, reference, lora_terms(rslora.peft_model), torch.bfloat16)
    print(f"rsLoRA case, bfloat16: largest difference from peft {largest:.3g}")
    assert not torch.equal(ours["transformer.norm_f.weight"], rslora.model.transformer.norm_f.weight.bfloat16())
    assert "9 merged with LoRA, 1 replaced (modules_to_save)" in output  # 8 linear layers and wte


def relayout(base: Path, directory: Path, layout: str) -> Path:
    """A copy of the `.bin`-sharded `base` in another published layout."""
    from safetensors.torch import save_file

    shutil.copytree(base, directory, ignore=shutil.ignore_patterns("pytorch_model*"))
    index = json.loads((base / "pytorch_model.bin.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    if layout.startswith("bin"):
        for shard in shards:
            shutil.copy(base / shard, directory / shard)
    else:  # the same tensors per shard, as safetensors files named as transformers names them
        for number, shard in enumerate(shards, start=1):
            name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
            save_file(torch.load(base / shard, weights_only=True), directory / name, metadata={"format": "pt"})
            index["weight_map"] = {k: (name if v == shard else v) for k, v in index["weight_map"].items()}
        if layout == "safetensors with index":
            (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    if layout == "bin with index":
        shutil.copy(base / "pytorch_model.bin.index.json", directory)
    return directory


@pytest.mark.parametrize("layout", ["bin without index", "safetensors with index", "safetensors without index"])
def test_every_published_layout_of_the_base_merges_alike(plain, tmp_path, capsys, layout):
    base = relayout(plain.base, tmp_path / "base", layout)
    merge_in_process(capsys, plain.base, plain.adapter, tmp_path / "from-bin-with-index")
    output = merge_in_process(capsys, base, plain.adapter, tmp_path / "merged")
    assert "base: 3 shards" in output
    expected, ours = read_checkpoint(tmp_path / "from-bin-with-index"), read_checkpoint(tmp_path / "merged")
    assert ours.keys() == expected.keys()
    assert all(torch.equal(ours[name], expected[name]) for name in expected)


def test_output_is_sharded_indexed_and_keeps_the_config_dialect(plain, tmp_path, capsys):
    out = tmp_path / "merged"
    output = merge_in_process(capsys, plain.base, plain.adapter, out, "--max-shard-size", "500KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 3 and shards[-1].name == f"model-{len(shards):05d}-of-{len(shards):05d}.safetensors"
    tensors = read_checkpoint(out)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.itemsize for t in tensors.values())
    for shard in shards:  # a shard passes 500 kB only when one tensor alone does
        names = [name for name, file in index["weight_map"].items() if file == shard.name]
        if len(names) > 1:
            assert sum(tensors[n].numel() * tensors[n].itemsize for n in names) <= 500 * 10**3
    base_config = json.loads((plain.base / "config.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config == {**base_config, "torch_dtype": "bfloat16"}  # MosaicML's dialect, as it was
    assert config["architectures"] == ["MPTForCausalLM"] and "auto_map" in config
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).read_bytes() == (plain.base / name).read_bytes()
    assert f"{len(shards)} safetensors shards" in output
    assert not list(tmp_path.glob(".merged.*"))  # no temporary directory left beside OUT
