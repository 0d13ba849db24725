"""`--base-nf4` merges into the base weights as QLoRA training saw them.

The reference is QLoRA's own path: transformers loading the base in 4 bits
(`BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)`,
bitsandbytes on the CPU), each `Linear4bit` weight dequantized with bitsandbytes'
`dequantize_4bit`, and peft's LoRA on that model (what trained the adapter).
"""

from __future__ import annotations

import copy

import pytest
import torch

from server.cli import main
from server.merge.nf4 import BLOCK_SIZE
from harness.lora_checkpoints import (
    LINEAR_TARGETS,
    assert_equal_within_rounding,
    lora_terms,
    make_lora_adapter,
    peft_merged_state,
    read_checkpoint,
    shared_case,
)
from harness.tiny_mpt import one_torch_thread


@pytest.fixture(scope="module")
def qlora(tmp_path_factory, neox_tokenizer_file):
    """A float32 safetensors base (transformers' dialect) and a LoRA on its four linear layers."""
    case = shared_case("rslora", tmp_path_factory, neox_tokenizer_file)
    adapter = tmp_path_factory.mktemp("qlora") / "adapter"
    peft_model = make_lora_adapter(case.model, adapter, seed=7, r=8, lora_alpha=16, target_modules=LINEAR_TARGETS)
    return case.base, adapter, case.model, peft_model


@one_torch_thread()
def load_in_4bit(base):
    """The base as QLoRA trains on it: transformers' bitsandbytes NF4 loading, double quantization."""
    from transformers import BitsAndBytesConfig, MptForCausalLM

    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    return MptForCausalLM.from_pretrained(base, quantization_config=quantization, dtype=torch.float32, device_map="cpu")


def dequantized_weights(model_4bit) -> dict[str, torch.Tensor]:
    """Every 4-bit weight, dequantized by bitsandbytes' own `dequantize_4bit`."""
    import bitsandbytes as bnb

    weights = {}
    for name, module in model_4bit.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            state = module.weight.quant_state
            assert state.quant_type == "nf4" and state.blocksize == BLOCK_SIZE and state.nested
            weights[f"{name}.weight"] = bnb.functional.dequantize_4bit(module.weight.data, state)
    return weights


def test_nf4_merge_equals_peft_on_bitsandbytes_dequantized_weights(qlora, tmp_path, capsys):
    base, adapter, model, peft_model = qlora
    assert main(["merge", str(base), str(adapter), str(tmp_path / "merged"), "--base-nf4", "--dtype", "float32"]) == 0
    assert "8 through the NF4 round-trip" in capsys.readouterr().out
    ours = read_checkpoint(tmp_path / "merged")
    dequantized = dequantized_weights(load_in_4bit(base))
    # transformers quantizes exactly the four linear layers of each block, and no other tensor.
    assert set(dequantized) == {
        f"transformer.blocks.{i}.{m}.weight"
        for i in range(2)
        for m in ("attn.Wqkv", "attn.out_proj", "ffn.up_proj", "ffn.down_proj")
    }
    reference = peft_merged_state(with_weights(model, dequantized), adapter, torch.float32)
    assert_equal_within_rounding(ours, reference, lora_terms(peft_model), torch.float32)
    plain = {n: t for n, t in model.state_dict().items() if n in ours}
    for name in ("transformer.wte.weight", "transformer.blocks.0.norm_1.weight", "transformer.norm_f.weight"):
        assert torch.equal(ours[name], plain[name]), name  # never quantized: as the base has them


def with_weights(model, weights: dict[str, torch.Tensor]):
    copied = copy.deepcopy(model)
    with torch.no_grad():
        for name, weight in weights.items():
            copied.get_parameter(name).copy_(weight)
    return copied


@one_torch_thread()
@torch.no_grad()
def test_nf4_merge_matches_the_qlora_trained_model_far_closer_than_the_plain_merge(qlora, tmp_path, capsys):
    """The trained model is peft's LoRA over the dequantized 4-bit weights: what bitsandbytes'
    4-bit layer computes on a GPU (dequantize_4bit, then the matmul in the compute dtype, float32
    here). Its CPU kernel is not used: it needs in_features divisible by the block size (this
    model's 224 is not) and rounds the block scales to bfloat16, unlike training."""
    from peft import PeftModel
    from transformers import MptForCausalLM

    base, adapter, model, _ = qlora
    for name, extra in (("plain", []), ("nf4", ["--base-nf4"])):
        assert main(["merge", str(base), str(adapter), str(tmp_path / name), "--dtype", "float32", *extra]) == 0
    capsys.readouterr()
    tokens = torch.tensor([[510, 5347, 273, 6181, 310, 247, 1499, 1027, 13, 275, 247, 2659]])
    as_trained = with_weights(model, dequantized_weights(load_in_4bit(base)))
    trained_logits = PeftModel.from_pretrained(as_trained, adapter).eval()(tokens).logits
    distance = {}
    for name in ("plain", "nf4"):
        merged = MptForCausalLM.from_pretrained(tmp_path / name, dtype=torch.float32).eval()
        distance[name] = (merged(tokens).logits - trained_logits).abs().max().item()
    print(f"largest logit difference from the QLoRA-trained model: {distance}")
    assert distance["plain"] > 0.05  # NF4's rounding is visible in the logits...
    assert distance["nf4"] < distance["plain"] / 100  # ...and the NF4 merge removes it
