"""AutoAWQ's part of the MPT plugin that needs neither vLLM nor a 4-bit kernel: the activation
with its scales, and the refusal of a checkpoint that lacks them.

AutoAWQ quantizes MPT's MLP with a per-channel scale s moved out of `down_proj`'s inputs (its
weights are stored for inputs × s) into the activation, gelu(x) / s, saved per block as
`transformer.blocks.N.ffn.act.scales`. Plain torch, so its arithmetic is tested on every CPU
(tests/models/test_act_scales.py), whether or not the vLLM build can run 4-bit weights.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

# vLLM's names for AutoAWQ checkpoints, which carry the GELU's input scales (`ffn.act.scales`).
AUTO_AWQ_METHODS = ("auto_awq", "awq", "awq_marlin")


class ScaledGelu(nn.Module):
    """AutoAWQ's MPT activation, gelu(x) / scales (`ffn.act.scales`), with MPT's exact (erf)
    GELU, what vLLM's `GELU` computes on x86 and GPUs. Rank `tp_rank` of `tp_size` holds the
    slice of the scales that matches its `up_proj` shard (`scales.weight_loader` takes the
    checkpoint's whole tensor)."""

    def __init__(self, channels: int, tp_size: int = 1, tp_rank: int = 0) -> None:
        super().__init__()
        if channels % tp_size:
            raise ValueError(f"{channels} activation scales do not split over {tp_size} ranks")
        shard = channels // tp_size
        self.scales = nn.Parameter(torch.empty(shard, dtype=torch.get_default_dtype()), requires_grad=False)
        self.scales.weight_loader = partial(_load_scales_shard, channels=channels, rank=tp_rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(x, approximate="none") / self.scales


def _load_scales_shard(param: nn.Parameter, loaded: torch.Tensor, *, channels: int, rank: int) -> None:
    if tuple(loaded.shape) != (channels,):
        raise ValueError(
            f"AWQ activation scales of shape {tuple(loaded.shape)} where the MLP has {channels} channels"
        )
    shard = param.shape[0]
    param.data.copy_(loaded.narrow(0, rank * shard, shard))


def missing_act_scales_refusal(missing: list[str], blocks: int) -> str:
    """One line for an AWQ checkpoint without some of its `ffn.act.scales` (`missing`: their
    names), out of `blocks` MLPs that need them."""
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    return (
        f"the AWQ checkpoint has no activation scales for {len(missing)} of {blocks} MPT blocks "
        f"({shown}): AutoAWQ moved them out of down_proj's weights, so without them the MLPs would "
        "compute gelu(x) where the weights expect gelu(x) / scales; export the checkpoint again with "
        "AutoAWQ, which writes them"
    )


def refuse_missing_act_scales(model: nn.Module, loaded: set[str]) -> None:
    """After a load: raise when some `ScaledGelu` of `model` got no scales from the checkpoint
    (`loaded`: the parameter names loaded). vLLM checks that every parameter was loaded only for
    unquantized models, so without this an AWQ model would run on uninitialised scales."""
    needed = [f"{name}.scales" for name, module in model.named_modules() if isinstance(module, ScaledGelu)]
    missing = [name for name in needed if name not in loaded]
    if missing:
        raise ValueError(missing_act_scales_refusal(missing, len(needed)))
