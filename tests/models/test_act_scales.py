"""The plugin's AutoAWQ activation (`server.models.awq.ScaledGelu`) on plain tensors: no vLLM
engine, no distributed state, no 4-bit kernel, so its arithmetic is tested on every CPU kind
(AVX2-only hosts included, where vLLM cannot run AWQ weights; tests/models/test_quantized.py).

AutoAWQ MPT checkpoints hold `ffn.act.scales`, the GELU's input scales: forward gelu(x) / scales,
with MPT's exact (erf) GELU. Under tensor parallelism each rank holds the scales of its
`up_proj` shard, loaded from the checkpoint's whole tensor.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from server.models.awq import ScaledGelu, missing_act_scales_refusal, refuse_missing_act_scales

CHANNELS = 8


def scales_and_inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    scales = 0.5 + 1.5 * torch.rand(CHANNELS, generator=generator)  # AutoAWQ's are O(1), positive
    return scales, 3 * torch.randn(5, CHANNELS, generator=generator)


def loaded_layer(scales: torch.Tensor, tp_size: int = 1, tp_rank: int = 0) -> ScaledGelu:
    layer = ScaledGelu(CHANNELS, tp_size, tp_rank)
    layer.scales.weight_loader(layer.scales, scales)  # how vLLM's AutoWeightsLoader calls it
    return layer


def test_forward_is_the_exact_gelu_divided_by_the_scales():
    scales, x = scales_and_inputs()
    got = loaded_layer(scales)(x)
    torch.testing.assert_close(got, nn.functional.gelu(x) / scales)
    # The erf GELU, not the tanh approximation, and the scales applied per channel (last dim).
    assert (got - nn.functional.gelu(x, approximate="tanh") / scales).abs().max() > 1e-4
    assert not torch.allclose(got, nn.functional.gelu(x))


@pytest.mark.parametrize("tp_size", [2, 4])
def test_each_tensor_parallel_rank_holds_and_applies_its_slice(tp_size):
    scales, x = scales_and_inputs(1)
    whole = nn.functional.gelu(x) / scales
    shard = CHANNELS // tp_size
    for rank in range(tp_size):
        layer = loaded_layer(scales, tp_size, rank)
        columns = slice(rank * shard, (rank + 1) * shard)
        assert torch.equal(layer.scales, scales[columns])
        # float32 tolerance: torch's vectorised erf rounds a strided slice's tail differently.
        torch.testing.assert_close(layer(x[:, columns]), whole[:, columns])


def test_float16_like_the_served_model_stays_within_rounding():
    scales, x = scales_and_inputs(2)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)  # how vLLM builds an AWQ model
    try:
        layer = loaded_layer(scales.half())
    finally:
        torch.set_default_dtype(previous)
    assert layer.scales.dtype == torch.float16
    got = layer(x.half()).float()
    want = nn.functional.gelu(x) / scales.half().float()
    assert (got - want).abs().max() <= 2e-3 * want.abs().max()


def test_scales_of_another_size_are_refused_naming_both():
    layer = ScaledGelu(CHANNELS, 2, 1)
    with pytest.raises(ValueError, match=r"shape \(6,\) where the MLP has 8 channels"):
        layer.scales.weight_loader(layer.scales, torch.ones(6))
    with pytest.raises(ValueError, match="8 activation scales do not split over 3 ranks"):
        ScaledGelu(CHANNELS, 3, 0)


def test_a_load_that_left_scales_out_is_refused_naming_them():
    model = nn.ModuleDict({f"block{i}": nn.ModuleDict({"act": ScaledGelu(CHANNELS)}) for i in range(5)})
    refuse_missing_act_scales(model, {f"block{i}.act.scales" for i in range(5)})  # all there
    with pytest.raises(ValueError) as refused:
        refuse_missing_act_scales(model, {"block1.act.scales"})
    line = str(refused.value)
    assert "\n" not in line
    assert line == missing_act_scales_refusal(
        ["block0.act.scales", "block2.act.scales", "block3.act.scales", "block4.act.scales"], 5
    )
    assert line.startswith("the AWQ checkpoint has no activation scales for 4 of 5 MPT blocks "
                           "(block0.act.scales, block2.act.scales, block3.act.scales and 1 more)")
