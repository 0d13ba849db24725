"""The merge refuses adapters it cannot merge correctly: one plain line naming the problem, a
non-zero exit, no traceback, and nothing written (OUT absent, no partial directory).

Adapters are made by peft itself (`get_peft_model` on transformers models: a wider or deeper MPT,
a Llama, DoRA, IA3, LoHa, OLoRA, PiSSA). Bases, missing files and OUT:
tests/merge/test_refusals_inputs.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.lora_checkpoints import LINEAR_TARGETS, copy_of, edit_json, make_lora_adapter, refusal, shared_case
from harness.tiny_mpt import TinyMpt, build_reference


@pytest.fixture(scope="module")
def plain(tmp_path_factory, neox_tokenizer_file):
    return shared_case("plain", tmp_path_factory, neox_tokenizer_file)


def peft_adapter(model, directory: Path, config) -> Path:
    from peft import get_peft_model

    get_peft_model(model, config).save_pretrained(directory)
    return directory


# ---- adapters that do not fit the base ----


def test_adapter_for_a_deeper_model_names_the_module_the_base_lacks(plain, tmp_path):
    deeper = build_reference(TinyMpt(n_layers=3))
    make_lora_adapter(deeper, tmp_path / "adapter", r=8, lora_alpha=16, target_modules=LINEAR_TARGETS)
    message = refusal(plain.base, tmp_path / "adapter", tmp_path / "out")
    assert message.startswith(
        "adapter module transformer.blocks.2.attn.Wqkv is not in the base: adapter tensor "
        "base_model.model.transformer.blocks.2.attn.Wqkv.lora_A.weight targets"
    ), message


def test_adapter_for_a_wider_model_names_the_tensor_and_both_shapes(plain, tmp_path):
    wider = build_reference(TinyMpt(d_model=336, n_heads=3))
    make_lora_adapter(wider, tmp_path / "adapter", r=8, lora_alpha=16, target_modules=LINEAR_TARGETS)
    message = refusal(plain.base, tmp_path / "adapter", tmp_path / "out")
    assert message == (
        "adapter tensor base_model.model.transformer.blocks.0.attn.Wqkv.lora_A.weight has shape [8, 336] "
        "but base tensor transformer.blocks.0.attn.Wqkv.weight is [672, 224]: lora_A must be [r, 224]"
    )


def test_adapter_for_another_architecture_is_refused_as_such(plain, tmp_path):
    from peft import LoraConfig
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            vocab_size=128,
        )
    )
    peft_adapter(llama, tmp_path / "adapter", LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    message = refusal(plain.base, tmp_path / "adapter", tmp_path / "out")
    assert "was made for another architecture: none of its 2 LoRA modules is in the base" in message
    assert "model.layers.0.self_attn." in message and "transformer.blocks.N.attn.Wqkv" in message


def test_config_and_weights_that_disagree_on_rank_are_refused(plain, tmp_path):
    adapter = copy_of(plain.adapter, tmp_path / "adapter")
    edit_json(adapter / "adapter_config.json", r=4)
    message = refusal(plain.base, adapter, tmp_path / "out")
    assert "has rank 8" in message and "gives it r=4" in message


def test_weights_for_modules_the_config_does_not_target_are_refused(plain, tmp_path):
    adapter = copy_of(plain.adapter, tmp_path / "adapter")
    edit_json(adapter / "adapter_config.json", target_modules=["Wqkv"])
    message = refusal(plain.base, adapter, tmp_path / "out")
    assert "which adapter_config.json target_modules ['Wqkv'] does not name" in message


def test_an_adapter_tensor_of_unknown_kind_is_refused_by_name(plain, tmp_path):
    from safetensors.torch import load_file, save_file

    adapter = copy_of(plain.adapter, tmp_path / "adapter")
    weights = load_file(adapter / "adapter_model.safetensors")
    weights["base_model.model.transformer.blocks.0.attn.Wqkv.lora_C.weight"] = torch.zeros(8, 8)
    save_file(weights, adapter / "adapter_model.safetensors")
    message = refusal(plain.base, adapter, tmp_path / "out")
    assert message.startswith(
        "adapter tensor base_model.model.transformer.blocks.0.attn.Wqkv.lora_C.weight "
        "is not a LoRA A/B weight or a modules_to_save tensor"
    )


# ---- adapter types this merge does not implement ----


def test_dora_is_refused(plain, tmp_path):
    from peft import LoraConfig

    peft_adapter(
        build_reference(TinyMpt()), tmp_path / "adapter", LoraConfig(r=4, target_modules=LINEAR_TARGETS, use_dora=True)
    )
    message = refusal(plain.base, tmp_path / "adapter", tmp_path / "out")
    assert message.startswith(f"adapter {tmp_path / 'adapter'}: DoRA adapters are not implemented")
    assert "use_dora: True" in message
    # A config that hides it: the magnitude tensors still give it away.
    edit_json(tmp_path / "adapter" / "adapter_config.json", use_dora=False)
    message = refusal(plain.base, tmp_path / "adapter", tmp_path / "out")
    assert "DoRA adapters are not implemented" in message and "lora_magnitude_vector" in message


@pytest.mark.parametrize("kind", ["IA3", "LOHA"])
def test_other_adapter_types_are_refused(plain, tmp_path, kind):
    from peft import IA3Config, LoHaConfig

    config = {
        "IA3": IA3Config(target_modules=["Wqkv", "down_proj"], feedforward_modules=["down_proj"]),
        "LOHA": LoHaConfig(r=4, target_modules=LINEAR_TARGETS),
    }[kind]
    peft_adapter(build_reference(TinyMpt()), tmp_path / "adapter", config)
    message = refusal(plain.base, tmp_path / "adapter", tmp_path / "out")
    assert message == (
        f"adapter {tmp_path / 'adapter'} is of type {kind}, which is not implemented: "
        "this merge handles LoRA adapters (peft_type LORA) only"
    )


@pytest.mark.parametrize("init", ["olora", "pissa"])
def test_an_adapter_initialised_from_the_base_weights_is_refused(plain, tmp_path, init):
    # OLoRA and PiSSA move the adapter's part out of the base at initialisation: merged into the
    # published base, the adapter would count it twice.
    from peft import LoraConfig

    model = build_reference(TinyMpt())
    peft_adapter(model, tmp_path / "adapter", LoraConfig(r=4, target_modules=LINEAR_TARGETS, init_lora_weights=init))
    message = refusal(plain.base, tmp_path / "adapter", tmp_path / "out")
    assert message.startswith(
        f"adapter {tmp_path / 'adapter'} was initialised with init_lora_weights '{init}', "
        "which also changes the base weights it trains against"
    )
