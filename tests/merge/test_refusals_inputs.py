"""The merge refuses bases and outputs it must not touch, and files that are missing: one plain
line naming the problem, a non-zero exit, no traceback, and nothing written (OUT absent or
untouched, no partial directory).

Quantized bases are made by transformers' own 4-bit and 8-bit loading (bitsandbytes on the CPU)
and `save_pretrained`. Adapters: tests/merge/test_refusals.py.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from server.cli import main
from harness.lora_checkpoints import PREFIX, copy_of, edit_json, refusal, run_merge, shared_case, snapshot


@pytest.fixture(scope="module")
def plain(tmp_path_factory, neox_tokenizer_file):
    return shared_case("plain", tmp_path_factory, neox_tokenizer_file)


@pytest.fixture(scope="module")
def rslora(tmp_path_factory, neox_tokenizer_file):
    return shared_case("rslora", tmp_path_factory, neox_tokenizer_file)


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
