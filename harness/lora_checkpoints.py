"""Base checkpoints as MPT-30B publishes them, real peft LoRA adapters on them, and peft's merge.

- `save_bin_base`: a tiny MPT (harness/tiny_mpt.py) written the way MosaicML ships
  MPT-30B: bfloat16 `pytorch_model-0000N-of-0000M.bin` shards with `pytorch_model.bin.index.json`,
  MosaicML's config dialect, the GPT-NeoX tokenizer and a generation_config.json.
- `make_lora_adapter`: peft's `get_peft_model` on the transformers model, every lora_A and
  lora_B filled with seeded noise (B non-zero, as after training), saved with peft's own
  `save_pretrained`.
- `peft_merged_state`: what peft's `merge_and_unload()` makes of the same base and adapter, the
  reference the merge must equal.
- `run_merge`: the real command in a child process; `refusal`: the real command in this process,
  asserted to have refused in one line and written nothing.
- `assert_equal_within_rounding`: the bound of tests/merge/test_equals_peft.py.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from server.cli import main
from harness.server import REPO_ROOT
from harness.tiny_mpt import TinyMpt, build_reference, one_torch_thread, save_checkpoint

GENERATION_CONFIG = {"_from_model_config": True, "bos_token_id": 0, "eos_token_id": 0}


def round_to_bfloat16(model: torch.nn.Module) -> torch.nn.Module:
    """Make every weight a bfloat16 value (kept in float32): the base then is what a bf16
    checkpoint holds, exactly, whatever dtype a test loads it in."""
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(param.to(torch.bfloat16).to(param.dtype))
    return model


def split_evenly(names: list[str], sizes: dict[str, int], parts: int) -> list[list[str]]:
    """Consecutive groups of `names` of roughly equal total size."""
    total = sum(sizes.values())
    groups: list[list[str]] = [[]]
    filled = 0
    for name in names:
        if groups[-1] and filled >= total * len(groups) / parts and len(groups) < parts:
            groups.append([])
        groups[-1].append(name)
        filled += sizes[name]
    return groups


def save_bin_shards(state: dict[str, torch.Tensor], directory: Path, shards: int, dtype: torch.dtype) -> list[Path]:
    """`state` as MosaicML's `.bin` shards and index (tensors cast to `dtype`)."""
    names = list(state)
    sizes = {name: state[name].numel() * dtype.itemsize for name in names}
    groups = split_evenly(names, sizes, shards)
    weight_map, paths = {}, []
    for number, group in enumerate(groups, start=1):
        path = directory / f"pytorch_model-{number:05d}-of-{len(groups):05d}.bin"
        torch.save({name: state[name].to(dtype).contiguous().clone() for name in group}, path)
        weight_map.update({name: path.name for name in group})
        paths.append(path)
    index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
    return paths


def save_bin_base(model, spec: TinyMpt, directory: Path, tokenizer_file: Path, shards: int = 3) -> Path:
    """`model` as MPT-30B is published: bf16 `.bin` shards, MosaicML's config, tokenizer."""
    save_checkpoint(model, spec, directory, tokenizer_file)
    (directory / "model.safetensors").unlink()
    config = json.loads((directory / "config.json").read_text())
    config["torch_dtype"] = "bfloat16"
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    (directory / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG))
    save_bin_shards(
        {k: v.detach() for k, v in model.state_dict().items() if k != "lm_head.weight"},
        directory,
        shards,
        torch.bfloat16,
    )
    return directory


@one_torch_thread()
def make_lora_adapter(
    model, directory: Path, seed: int = 1, b_std: float = 0.2, safe_serialization: bool = True, **lora_options
):
    """A peft LoRA adapter on a copy of `model`, trained-looking (seeded A and B), saved to
    `directory`; returns the peft model (float32, unmerged)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(task_type="CAUSAL_LM", **lora_options)
    peft_model = get_peft_model(copy.deepcopy(model), config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_A" in name or "lora_embedding_A" in name:
                fan_in = param.shape[1]
                param.copy_(torch.randn(param.shape, generator=generator) / fan_in**0.5)
            elif "lora_B" in name or "lora_embedding_B" in name:
                param.copy_(b_std * torch.randn(param.shape, generator=generator))
    peft_model.save_pretrained(directory, safe_serialization=safe_serialization)
    return peft_model.eval()


@one_torch_thread()
def peft_merged_state(model, adapter_dir: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """peft's merge: the base loaded in `dtype`, the adapter applied, `merge_and_unload()`."""
    from peft import PeftModel

    base = copy.deepcopy(model).to(dtype)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    return {name: tensor.detach() for name, tensor in merged.state_dict().items() if name != "lm_head.weight"}


def run_merge(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "server", "merge", *map(str, args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ---- the cases the merge tests share (built once per test session) ----

LINEAR_TARGETS = ["Wqkv", "out_proj", "up_proj", "down_proj"]


@dataclass
class LoraCase:
    base: Path
    adapter: Path
    model: torch.nn.Module  # the base in transformers (float32 holding bfloat16 values)
    peft_model: torch.nn.Module  # the same with the adapter applied, unmerged


def _plain_case(root: Path, tokenizer_file: Path) -> LoraCase:
    """MPT-30B's layout: bf16 `.bin` shards in MosaicML's dialect; a LoRA on the four linear layers."""
    spec = TinyMpt(dialect="mosaicml")
    model = round_to_bfloat16(build_reference(spec))
    base = save_bin_base(model, spec, root / "base", tokenizer_file, shards=3)
    peft_model = make_lora_adapter(model, root / "adapter", r=8, lora_alpha=16, target_modules=LINEAR_TARGETS)
    return LoraCase(base, root / "adapter", model, peft_model)


def _rslora_case(root: Path, tokenizer_file: Path) -> LoraCase:
    """transformers' layout and dialect (one safetensors file); an rsLoRA adapter saved as .bin
    with a rank_pattern and alpha_pattern, a LoRA on the embedding, and modules_to_save."""
    spec = TinyMpt(seed=3)
    model = round_to_bfloat16(build_reference(spec))
    base = save_checkpoint(model, spec, root / "base", tokenizer_file)
    peft_model = make_lora_adapter(
        model,
        root / "adapter",
        seed=4,
        safe_serialization=False,
        r=8,
        lora_alpha=16,
        use_rslora=True,
        rank_pattern={"blocks.1.attn.Wqkv": 4, "out_proj": 2},
        alpha_pattern={"down_proj": 64},
        target_modules=[*LINEAR_TARGETS, "wte"],
        modules_to_save=["norm_f"],
    )
    with torch.no_grad():  # a trained copy of norm_f, unlike the base's
        peft_model.base_model.model.transformer.norm_f.modules_to_save["default"].weight.mul_(1.5)
    peft_model.save_pretrained(root / "adapter", safe_serialization=False)
    return LoraCase(base, root / "adapter", model, peft_model)


CASE_BUILDERS = {"plain": _plain_case, "rslora": _rslora_case}
_built: dict[str, LoraCase] = {}


def shared_case(name: str, tmp_path_factory, tokenizer_file: Path) -> LoraCase:
    """The case `name`, built on first use and shared by every test module of the session."""
    if name not in _built:
        _built[name] = CASE_BUILDERS[name](tmp_path_factory.mktemp(f"lora-{name}"), tokenizer_file)
    return _built[name]


def read_checkpoint(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors checkpoint, through its index, with safetensors' own reader."""
    from safetensors import safe_open

    index = json.loads((directory / "model.safetensors.index.json").read_text())
    tensors = {}
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(str(directory / shard), framework="pt") as handle:
            for name in handle.keys():
                tensors[name] = handle.get_tensor(name)
    assert set(tensors) == set(index["weight_map"]), "the index and the shards disagree"
    return tensors


# ---- equal to peft within rounding ----


def lora_terms(peft_model) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """For each adapted weight: (|scale·B·A|, r·u32·scale·(|B|·|A|)), in float32, as stored."""
    terms = {}
    u32 = torch.finfo(torch.float32).eps / 2
    for name, module in peft_model.base_model.model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            a, b = module.lora_A["default"].weight.float(), module.lora_B["default"].weight.float()
            transpose = False
        elif hasattr(module, "lora_embedding_A") and "default" in module.lora_embedding_A:
            a, b = module.lora_embedding_A["default"].float(), module.lora_embedding_B["default"].float()
            transpose = True
        else:
            continue
        scale, rank = module.scaling["default"], a.shape[0]
        delta, error = (b @ a).abs() * scale, rank * u32 * scale * (b.abs() @ a.abs())
        terms[f"{name}.weight"] = (delta.T, error.T) if transpose else (delta, error)
    return terms


def assert_equal_within_rounding(ours: dict, reference: dict, terms: dict, dtype: torch.dtype) -> float:
    """Every tensor of `ours` equals peft's `reference` within
    u·(2·|peft| + |delta|) + r·u32·scale·(|B|·|A|) + the dtype's subnormal spacing
    (why: tests/merge/test_equals_peft.py); returns the largest difference."""
    assert set(ours) == set(reference)
    finfo = torch.finfo(dtype)
    unit_roundoff, subnormal_spacing = finfo.eps / 2, finfo.smallest_normal * finfo.eps
    largest = 0.0
    for name, expected in reference.items():
        actual = ours[name]
        assert actual.dtype == dtype and actual.shape == expected.shape, name
        difference = (actual.float() - expected.float()).abs()
        delta, matmul_error = terms.get(name, (torch.zeros(()), torch.zeros(())))
        bound = unit_roundoff * (2 * expected.float().abs() + delta) + matmul_error + subnormal_spacing
        worst = (difference - bound).max().item()
        assert worst <= 0, f"{name}: differs from peft by up to {difference.max().item():.3g}, past the bound"
        largest = max(largest, difference.max().item())
    return largest


# ---- refusals: the command refused, in this process, and wrote nothing ----

PREFIX = "airoboros-server merge: "


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


def copy_of(directory: Path, destination: Path) -> Path:
    return Path(shutil.copytree(directory, destination))


def edit_json(path: Path, **changes) -> None:
    value = json.loads(path.read_text())
    value.update(changes)
    path.write_text(json.dumps(value))
