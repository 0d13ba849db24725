"""A peft LoRA adapter: `adapter_config.json`, its weights, and each module's scale.

What a LoRA merge needs from the config: `r`, `lora_alpha`, `use_rslora`, `rank_pattern` and
`alpha_pattern` give each module its scale, `lora_alpha / r` or, with rsLoRA,
`lora_alpha / sqrt(r)`, where a module's r and alpha come from the first pattern key matching the
end of its name at a dot boundary (peft's own rule) or else the global values. `target_modules`
and `modules_to_save` must agree with the weights. `fan_in_fan_out` describes GPT-2-style Conv1D
weights; MPT's layers are `nn.Linear`, for which peft itself turns it off, so it changes nothing.

The weights (`adapter_model.safetensors`, or `adapter_model.bin` memory-mapped) are keyed as peft
saves them: `base_model.model.<module>.lora_A.weight` / `lora_B.weight` for a linear layer,
`<module>.lora_embedding_A` / `lora_embedding_B` for an embedding, and full replacement tensors
for `modules_to_save`. Anything else (DoRA's magnitudes, LoRA biases, other adapter types) is
refused by name rather than skipped, so a merge never silently drops part of an adapter.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from server.merge.base_checkpoint import load_bin_state, read_json
from server.merge.errors import MergeError

CONFIG_NAME = "adapter_config.json"
WEIGHT_NAMES = ("adapter_model.safetensors", "adapter_model.bin")
KEY_PREFIX = "base_model.model."
_LINEAR_KEY = re.compile(r"(?P<module>.+)\.(?P<part>lora_A|lora_B)\.weight")
_EMBEDDING_KEY = re.compile(r"(?P<module>.+)\.(?P<part>lora_embedding_A|lora_embedding_B)")
_PARTS = {"lora_A": "A", "lora_B": "B", "lora_embedding_A": "A", "lora_embedding_B": "B"}

# Config fields that turn on a LoRA variant whose merged weight is not W + scale·B·A; a set
# (true or non-empty) value is refused, naming the field.
_VARIANT_FIELDS = {
    "use_dora": "DoRA adapters are not implemented (its merge rescales every weight column by a learned magnitude)",
    "lora_bias": "LoRA with a bias on lora_B is not implemented",
    "use_qalora": "QA-LoRA adapters are not implemented",
    "alora_invocation_tokens": "activated LoRA (aLoRA) cannot be merged: it applies only after its invocation tokens",
    "target_parameters": "LoRA on bare parameters (target_parameters) is not implemented",
    "layer_replication": "layer replication is not implemented",
    "trainable_token_indices": "trainable tokens are not implemented",
    "use_bdlora": "BD-LoRA is not implemented",
    "velora_config": "VeLoRA adapters are not implemented",
    "monteclora_config": "MonteCLoRA adapters are not implemented",
    "kasa_config": "KaSA adapters are not implemented",
    "arrow_config": "Arrow routing over several LoRAs is not implemented",
}


@dataclass(frozen=True)
class LoraModule:
    """One adapted layer: its base weight becomes W + scale · B·A (an embedding's: + scale · (B·A)ᵀ)."""

    name: str  # the module's name in the base, e.g. transformer.blocks.0.attn.Wqkv
    kind: Literal["linear", "embedding"]
    lora_a: torch.Tensor
    lora_b: torch.Tensor
    scale: float

    @property
    def weight_name(self) -> str:
        return f"{self.name}.weight"

    def adapter_key(self, part: Literal["A", "B"]) -> str:
        suffix = {"linear": f"lora_{part}.weight", "embedding": f"lora_embedding_{part}"}[self.kind]
        return f"{KEY_PREFIX}{self.name}.{suffix}"

    def base_shape(self) -> tuple[int, int]:
        """The base weight's shape these A and B fit."""
        if self.kind == "linear":  # A: [r, in], B: [out, r], W: [out, in]
            return self.lora_b.shape[0], self.lora_a.shape[1]
        return self.lora_a.shape[1], self.lora_b.shape[0]  # A: [r, vocab], B: [dim, r], W: [vocab, dim]

    def add_to(self, weight: torch.Tensor) -> None:
        """weight (float32, in place) += scale · B·A, computed in float32 with no extra copy."""
        a, b = self.lora_a.to(torch.float32), self.lora_b.to(torch.float32)
        if self.kind == "linear":
            weight.addmm_(b, a, alpha=self.scale)
        else:
            weight.addmm_(a.T, b.T, alpha=self.scale)

    @property
    def nbytes(self) -> int:
        return self.lora_a.nbytes + self.lora_b.nbytes


def pattern_key(patterns: dict[str, Any], module: str) -> str | None:
    """The first key of `patterns` that matches the end of `module` at a dot boundary (peft's rule)."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return None


def rank_and_alpha(config: dict[str, Any], module: str) -> tuple[int, float]:
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    rank_key, alpha_key = pattern_key(rank_pattern, module), pattern_key(alpha_pattern, module)
    rank = rank_pattern[rank_key] if rank_key is not None else config["r"]
    alpha = alpha_pattern[alpha_key] if alpha_key is not None else config["lora_alpha"]
    return int(rank), float(alpha)


def lora_scale(config: dict[str, Any], module: str) -> float:
    rank, alpha = rank_and_alpha(config, module)
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def is_targeted(config: dict[str, Any], module: str) -> bool:
    """Whether `target_modules` names `module` as peft matches it (a regex string matches whole)."""
    targets = config.get("target_modules")
    if targets is None or targets == "all-linear":
        return True
    if isinstance(targets, str):
        return re.fullmatch(targets, module) is not None
    return any(module == target or module.endswith(f".{target}") for target in targets)


# Initialisations that also rewrite the base weights (W - scale·B·A at the start of training): the
# adapter then only adds up with that residual base, not with the published one.
_BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")


def _check_config(directory: Path, config: dict[str, Any]) -> None:
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise MergeError(
            f"adapter {directory} is of type {peft_type}, which is not implemented: "
            "this merge handles LoRA adapters (peft_type LORA) only"
        )
    for field, why in _VARIANT_FIELDS.items():
        if config.get(field):
            raise MergeError(f"adapter {directory}: {why} ({CONFIG_NAME} sets {field}: {config[field]!r})")
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_BASE_CHANGING_INITS):
        raise MergeError(
            f"adapter {directory} was initialised with init_lora_weights {init!r}, which also changes the base "
            "weights it trains against: convert it to a plain LoRA first (peft's save_pretrained with "
            "path_initial_model_for_weight_conversion)"
        )
    if config.get("bias", "none") != "none":
        raise MergeError(
            f"adapter {directory} trains biases ({CONFIG_NAME} bias: {config['bias']!r}); "
            "only bias 'none' is implemented (MPT has no biases to merge them into)"
        )
    for field in ("r", "lora_alpha"):
        if not isinstance(config.get(field), (int, float)) or config[field] <= 0:
            raise MergeError(f"{directory / CONFIG_NAME}: {field} must be a positive number, not {config.get(field)!r}")


def _load_weights(directory: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    for name in WEIGHT_NAMES:
        path = directory / name
        if path.is_file():
            if path.suffix == ".bin":
                return path, dict(load_bin_state(path))
            from safetensors.torch import load_file

            try:
                return path, load_file(str(path))
            except Exception as error:
                raise MergeError(f"cannot read {path}: {str(error).splitlines()[0]}") from None
    raise MergeError(
        f"adapter weights are missing: neither {' nor '.join(str(directory / n) for n in WEIGHT_NAMES)} exists"
    )


def _module_to_save(config: dict[str, Any], path: str) -> str | None:
    """The base tensor a modules_to_save tensor replaces, or None when `path` is not one."""
    names = config.get("modules_to_save") or []
    tensor_name = path.replace(".modules_to_save.", ".")
    module = tensor_name.rsplit(".", 1)[0]
    if any(module == name or module.endswith(f".{name}") for name in names):
        return tensor_name
    return None


@dataclass
class LoraAdapter:
    directory: Path
    config: dict[str, Any]
    weights_path: Path
    modules: dict[str, LoraModule]  # by base module name
    replacements: dict[str, torch.Tensor]  # modules_to_save: base tensor name -> its new value

    @property
    def nbytes(self) -> int:
        return sum(m.nbytes for m in self.modules.values()) + sum(t.nbytes for t in self.replacements.values())

    @classmethod
    def open(cls, directory: Path) -> LoraAdapter:
        if not directory.is_dir():
            raise MergeError(f"adapter directory {directory} does not exist")
        config = read_json(directory / CONFIG_NAME, "the adapter's peft config")
        _check_config(directory, config)
        weights_path, weights = _load_weights(directory)
        parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        replacements: dict[str, torch.Tensor] = {}
        for key, tensor in weights.items():
            if not key.startswith(KEY_PREFIX):
                raise MergeError(f"adapter tensor {key} is not named as peft saves a model's adapter ({KEY_PREFIX}...)")
            path = key.removeprefix(KEY_PREFIX)
            if "lora_magnitude_vector" in path:
                raise MergeError(f"adapter {directory}: {_VARIANT_FIELDS['use_dora']} (it holds {key})")
            match = _LINEAR_KEY.fullmatch(path) or _EMBEDDING_KEY.fullmatch(path)
            if match:
                kind = "linear" if match.re is _LINEAR_KEY else "embedding"
                parts.setdefault((match["module"], kind), {})[_PARTS[match["part"]]] = tensor
            elif (target := _module_to_save(config, path)) is not None:
                replacements[target] = tensor
            else:
                raise MergeError(
                    f"adapter tensor {key} is not a LoRA A/B weight or a modules_to_save tensor; "
                    "this merge does not know how to merge it"
                )
            if not tensor.dtype.is_floating_point:
                raise MergeError(f"adapter tensor {key} is {tensor.dtype}, not floating point")
        modules = {}
        for (module, kind), pair in parts.items():
            modules[module] = _lora_module(directory, config, module, kind, pair)
        if not modules and not replacements:
            raise MergeError(f"adapter {weights_path} holds no LoRA weights")
        return cls(directory, config, weights_path, modules, replacements)


def _lora_module(
    directory: Path, config: dict[str, Any], module: str, kind: str, pair: dict[str, torch.Tensor]
) -> LoraModule:
    for part in ("A", "B"):
        if part not in pair:
            other = "B" if part == "A" else "A"
            raise MergeError(f"adapter module {module} has lora_{other} but no lora_{part}")
    lora = LoraModule(module, kind, pair["A"], pair["B"], lora_scale(config, module))  # type: ignore[arg-type]
    if lora.lora_a.dim() != 2 or lora.lora_b.dim() != 2:
        raise MergeError(f"adapter tensor {lora.adapter_key('A')} and its lora_B must be matrices")
    rank, _ = rank_and_alpha(config, module)
    if lora.lora_a.shape[0] != rank or lora.lora_b.shape[1] != rank:
        raise MergeError(
            f"adapter module {module} has rank {lora.lora_a.shape[0]} (lora_A {list(lora.lora_a.shape)}, "
            f"lora_B {list(lora.lora_b.shape)}) but {CONFIG_NAME} gives it r={rank} (r / rank_pattern)"
        )
    if not is_targeted(config, module):
        raise MergeError(
            f"adapter weights hold a LoRA for {module}, which {CONFIG_NAME} target_modules "
            f"{config.get('target_modules')!r} does not name: the config and the weights do not belong together"
        )
    return lora
