"""The merge refuses what it cannot merge correctly: one plain line naming the problem, a
non-zero exit, no traceback, and nothing written (OUT absent or untouched, no partial directory).

Adapters are made by peft itself (`get_peft_model` on transformers models: a wider or deeper MPT,
a Llama, DoRA, IA3, LoHa); quantized bases by transformers' own 4-bit and 8-bit loading
(bitsandbytes on the CPU) and `save_pretrained`.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from server.cli import main
from tests.support.lora_checkpoints import LINEAR_TARGETS, make_lora_adapter, run_merge, shared_case
from tests.support.tiny_mpt import TinyMpt, build_reference

PREFIX = "airoboros-server merge: "


@pytest.fixture(scope="module")
def plain(tmp_path_factory, neox_tokenizer_file):
    return shared_case("plain", tmp_path_factory, neox_tokenizer_file)


@pytest.fixture(scope="module")
def rslora(tmp_path_factory, neox_tokenizer_file):
    return shared_case("rslora", tmp_path_factory, neox_tokenizer_file)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def refusal(base: Path, adapter: Path, out: Path, *flags: str) -> str:
    """Run the real command in process; assert it refused and wrote nothing; return the message."""
    before = snapshot(out.parent)
    with pytest.raises(SystemExit) as raised:
        main(["merge", str(base), str(adapter), str(out), *flags])
    message = str(raised.value.code)
    assert message.startswith(PREFIX) and "\n" not in message, message
    assert snapshot(out.parent) == before, "the refused merge changed files beside OUT"
    assert not list(out.parent.glob(f".{out.name}.*")), "a partial directory was left"
    return message.removeprefix(PREFIX)


def peft_adapter(model, directory: Path, config) -> Path:
    from peft import get_peft_model

    get_peft_model(model, config).save_pretrained(directory)
    return directory


def copy_of(directory: Path, destination: Path) -> Path:
    return Path(shutil.copytree(directory, destination))


def edit_json(path: Path, **changes) -> None:
    value = json.loads(path.read_text())
    value.update(changes)
    path.write_text(json.dumps(value))


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


# ---- bases it must not merge into ----


@pytest.fixture(scope="module")
def quantized_bases(rslora, tmp_path_factory):
    """The rslora case's base saved by transformers after loading it in 4 and in 8 bits."""
    from transformers import BitsAndBytesConfig, MptForCausalLM

    root = tmp_path_factory.mktemp("quantized")
    settings = {
        "4-bit": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True),
        "8-bit": BitsAndBytesConfig(load_in_8bit=True),
    }
    for bits, quantization in settings.items():
        model = MptForCausalLM.from_pretrained(rslora.base, quantization_config=quantization, device_map="cpu")
        model.save_pretrained(root / bits)
        shutil.copy(rslora.base / "tokenizer.json", root / bits)
    return root


@pytest.mark.parametrize("bits", ["4-bit", "8-bit"])
def test_a_quantized_base_is_refused(quantized_bases, plain, tmp_path, bits):
    message = refusal(quantized_bases / bits, plain.adapter, tmp_path / "out")
    assert message.startswith(
        f"base {quantized_bases / bits} is quantized (config.json quantization_config: "
        f"bitsandbytes {bits}): merge into the 16-bit base the adapter was trained on"
    )


@pytest.mark.parametrize("bits", ["4-bit", "8-bit"])
def test_quantized_weights_are_refused_even_when_the_config_hides_them(quantized_bases, plain, tmp_path, bits):
    base = copy_of(quantized_bases / bits, tmp_path / "base")
    config = json.loads((base / "config.json").read_text())
    del config["quantization_config"]
    (base / "config.json").write_text(json.dumps(config))
    message = refusal(base, plain.adapter, tmp_path / "out")
    assert message.startswith(f"base {base} is quantized (") and "transformer.blocks.0.attn.Wqkv" in message


def test_a_base_of_another_architecture_is_refused(plain, tmp_path):
    base = copy_of(plain.base, tmp_path / "base")
    edit_json(base / "config.json", model_type="llama", architectures=["LlamaForCausalLM"])
    message = refusal(base, plain.adapter, tmp_path / "out")
    assert message.startswith(f"base {base} is not an MPT checkpoint (config.json model_type 'llama')")


# ---- missing files ----


def _remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()


MISSING = {
    "base directory": ("base", "", "base directory {base} does not exist"),
    "base config": ("base", "config.json", "{base}/config.json is missing (the base's config)"),
    "base shard": (
        "base",
        "pytorch_model-00002-of-00003.bin",
        "{base}/pytorch_model-00002-of-00003.bin is missing (listed in pytorch_model.bin.index.json)",
    ),
    "adapter directory": ("adapter", "", "adapter directory {adapter} does not exist"),
    "adapter config": (
        "adapter",
        "adapter_config.json",
        "{adapter}/adapter_config.json is missing (the adapter's peft config)",
    ),
    "adapter weights": (
        "adapter",
        "adapter_model.safetensors",
        "adapter weights are missing: neither "
        "{adapter}/adapter_model.safetensors nor {adapter}/adapter_model.bin exists",
    ),
    "tokenizer": (
        "base",
        "tokenizer.json",
        "no tokenizer: neither {adapter}/tokenizer.json nor {base}/tokenizer.json exists",
    ),
}


@pytest.mark.parametrize("missing", list(MISSING))
def test_a_missing_file_is_named(plain, tmp_path, missing):
    base, adapter = copy_of(plain.base, tmp_path / "base"), copy_of(plain.adapter, tmp_path / "adapter")
    where, name, expected = MISSING[missing]
    _remove({"base": base, "adapter": adapter}[where] / name)
    message = refusal(base, adapter, tmp_path / "out")
    assert message.startswith(expected.format(base=base, adapter=adapter)), message


# ---- OUT ----


def test_an_existing_out_is_refused_without_force_and_left_alone(plain, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    message = refusal(plain.base, plain.adapter, out)
    assert message == f"{out} already exists: pass --force to replace it"
    assert snapshot(out) == {"keep.txt": b"mine"}


def test_force_replaces_an_existing_out_whole(plain, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    assert main(["merge", str(plain.base), str(plain.adapter), str(out), "--force"]) == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors.index.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing set aside is left


def test_force_never_replaces_an_input(plain, tmp_path):
    base = copy_of(plain.base, tmp_path / "base")
    message = refusal(base, plain.adapter, base, "--force")
    assert message == f"OUT {base} is or contains the base directory {base.resolve()}; choose another OUT"


def test_a_tensor_that_overflows_float16_fails_the_merge_and_leaves_nothing(plain, tmp_path):
    base = copy_of(plain.base, tmp_path / "base")
    shard = base / "pytorch_model-00001-of-00003.bin"
    state = torch.load(shard, weights_only=True)
    state["transformer.wte.weight"][5, 5] = 1e6  # fine in bfloat16, past float16's 65504
    torch.save(state, shard)
    message = refusal(base, plain.adapter, tmp_path / "out", "--dtype", "float16")
    assert message == "transformer.wte.weight does not fit float16 (values beyond ±65504); merge with --dtype bfloat16"


def test_a_merge_that_cannot_fit_on_disk_is_refused_before_it_starts(plain, tmp_path, monkeypatch):
    import shutil as shutil_module

    real_disk_usage = shutil_module.disk_usage
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: real_disk_usage(path)._replace(free=10**6))
    message = refusal(plain.base, plain.adapter, tmp_path / "out")
    assert (
        message
        == f"not enough disk space for {tmp_path / 'out'}: the merged weights need 25.0 MB, {tmp_path} has 1.0 MB free"
    )


def test_base_nf4_without_bitsandbytes_says_how_to_install_it(plain, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    monkeypatch.setitem(sys.modules, "bitsandbytes.functional", None)
    message = refusal(plain.base, plain.adapter, tmp_path / "out", "--base-nf4")
    assert message == "--base-nf4 needs bitsandbytes: pip install 'airoboros-server[nf4]'"


# ---- the command line itself ----


def test_refusals_are_one_line_on_stderr_with_a_non_zero_exit(plain, tmp_path):
    missing = run_merge(tmp_path / "no-base", plain.adapter, tmp_path / "out")
    (tmp_path / "out").mkdir()
    exists = run_merge(plain.base, plain.adapter, tmp_path / "out")
    for result, expected in ((missing, "does not exist"), (exists, "already exists")):
        assert result.returncode == 1
        assert result.stdout == "" and "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(PREFIX) and expected in lines[0]


def test_a_bad_shard_size_names_the_flag(plain, tmp_path):
    result = run_merge(plain.base, plain.adapter, tmp_path / "out", "--max-shard-size", "5XB")
    assert result.returncode == 2
    assert "argument --max-shard-size: '5XB' is not a size like 5GB, 500MB or 10GiB" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
