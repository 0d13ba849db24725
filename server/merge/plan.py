"""What a merge does to each base tensor, decided and checked before anything is written.

Every base tensor is written once, in the base's order: copied (cast to the output dtype), merged
with its LoRA module, or replaced by a `modules_to_save` tensor; with `--base-nf4` the layers
QLoRA held in 4 bits go through the NF4 round-trip first. Every adapter tensor must land on a
base tensor of a fitting shape, or the plan is refused naming the tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from server.merge.adapter import KEY_PREFIX, LoraAdapter, LoraModule
from server.merge.base_checkpoint import BaseCheckpoint, TensorInfo
from server.merge.errors import MergeError
from server.merge.nf4 import is_quantized_in_training
from server.merge.safetensors_writer import OutputTensor

MPT_LAYERS = "transformer.blocks.N.attn.Wqkv, attn.out_proj, ffn.up_proj, ffn.down_proj and transformer.wte"


@dataclass(frozen=True)
class TensorAction:
    base: TensorInfo
    output: OutputTensor
    lora: LoraModule | None = None
    replacement: torch.Tensor | None = None
    nf4: bool = False


@dataclass
class MergePlan:
    actions: list[TensorAction]  # in the base's order, shard after shard

    def count(self, what: str) -> int:
        return sum(
            1
            for action in self.actions
            if {"merged": action.lora is not None, "replaced": action.replacement is not None, "nf4": action.nf4}[what]
        )

    @property
    def outputs(self) -> list[OutputTensor]:
        return [action.output for action in self.actions]


def _shape(shape: tuple[int, ...]) -> str:
    return str(list(shape))


def _check_module_fits(lora: LoraModule, base: TensorInfo) -> None:
    if len(base.shape) != 2:
        raise MergeError(
            f"adapter module {lora.name} targets {base.name}, which is not a matrix ({_shape(base.shape)})"
        )
    a_key, b_key = lora.adapter_key("A"), lora.adapter_key("B")
    a_shape, b_shape = tuple(lora.lora_a.shape), tuple(lora.lora_b.shape)
    if lora.kind == "linear":
        out_features, in_features = base.shape
        if a_shape[1] != in_features:
            raise MergeError(
                f"adapter tensor {a_key} has shape {_shape(a_shape)} but base tensor {base.name} is "
                f"{_shape(base.shape)}: lora_A must be [r, {in_features}]"
            )
        if b_shape[0] != out_features:
            raise MergeError(
                f"adapter tensor {b_key} has shape {_shape(b_shape)} but base tensor {base.name} is "
                f"{_shape(base.shape)}: lora_B must be [{out_features}, r]"
            )
    else:
        vocab, dim = base.shape
        if a_shape[1] != vocab:
            raise MergeError(
                f"adapter tensor {a_key} has shape {_shape(a_shape)} but base tensor {base.name} is "
                f"{_shape(base.shape)}: lora_embedding_A must be [r, {vocab}]"
            )
        if b_shape[0] != dim:
            raise MergeError(
                f"adapter tensor {b_key} has shape {_shape(b_shape)} but base tensor {base.name} is "
                f"{_shape(base.shape)}: lora_embedding_B must be [{dim}, r]"
            )


def _check_adapter_modules_exist(base: BaseCheckpoint, adapter: LoraAdapter) -> None:
    missing = [lora for lora in adapter.modules.values() if lora.weight_name not in base.tensors]
    if missing and len(missing) == len(adapter.modules):
        raise MergeError(
            f"adapter {adapter.directory} was made for another architecture: none of its "
            f"{len(missing)} LoRA modules is in the base (adapter tensor {missing[0].adapter_key('A')} "
            f"targets {missing[0].weight_name}); MPT's layers are {MPT_LAYERS}"
        )
    if missing:
        raise MergeError(
            f"adapter module {missing[0].name} is not in the base: adapter tensor "
            f"{missing[0].adapter_key('A')} targets {missing[0].weight_name}, which {base.directory} does not hold"
            + (f" ({len(missing)} modules like it)" if len(missing) > 1 else "")
        )
    for name, tensor in adapter.replacements.items():
        info = base.tensors.get(name)
        if info is None:
            raise MergeError(
                f"adapter tensor {KEY_PREFIX}{name} (modules_to_save) replaces {name}, which the base does not hold"
            )
        if tuple(tensor.shape) != info.shape:
            raise MergeError(
                f"adapter tensor {KEY_PREFIX}{name} (modules_to_save) has shape {_shape(tuple(tensor.shape))} "
                f"but base tensor {name} is {_shape(info.shape)}"
            )


def plan_merge(base: BaseCheckpoint, adapter: LoraAdapter, dtype: torch.dtype, base_nf4: bool) -> MergePlan:
    _check_adapter_modules_exist(base, adapter)
    loras = {lora.weight_name: lora for lora in adapter.modules.values()}
    actions = []
    for info in base.tensors.values():
        lora = loras.get(info.name)
        if lora is not None:
            _check_module_fits(lora, info)
        output_dtype = dtype if info.dtype.is_floating_point else info.dtype
        actions.append(
            TensorAction(
                base=info,
                output=OutputTensor(info.name, info.shape, output_dtype),
                lora=lora,
                replacement=adapter.replacements.get(info.name),
                nf4=base_nf4 and is_quantized_in_training(info.name) and info.name not in adapter.replacements,
            )
        )
    return MergePlan(actions)
