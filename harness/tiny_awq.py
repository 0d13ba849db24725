"""A tiny AutoAWQ-format MPT checkpoint, and transformers' MPT computing exactly what it encodes.

AutoAWQ quantizes MPT's linear layers to 4 bits (per group of input channels: an fp16 scale and a
4-bit zero) and, because MPT's GELU sits between `up_proj` and `down_proj`, moves a per-channel
scale s out of `down_proj`'s input into the activation: `down_proj` is stored for inputs × s, and
the activation becomes gelu(x) / s, saved as `transformer.blocks.N.ffn.act.scales`.

`make_tiny_awq_mpt` takes a random tiny MPT (harness/tiny_mpt.py), draws act scales in
[0.5, 2], quantizes every linear layer that way and writes the AutoAWQ layout: `qweight` and
`qzeros` int32 (input rows × output/8, AWQ's interleaved nibble order, vLLM's `awq_pack`),
`scales` fp16, `quantization_config` in config.json. The reference model it returns holds the
dequantized weights ((q − zero) × scale, in float32) and computes gelu(x) / s, so it is the
direct computation of what the checkpoint encodes. `reference_without_act_scales` drops the
division, to show what loading the scales changes. `act_scales=False` writes the checkpoint
without `ffn.act.scales`, as a broken export would.

Run as a script (a child process: it initialises vLLM's distributed state), it builds our vLLM
MPT for such a checkpoint and prints one result line:
- `layers DIR TOKENIZER`: `AWQ-KERNEL {build, cpu_gemm_wna16}`, then `AWQ-REFUSED <line>` when the
  server refuses the checkpoint on this CPU build, else `AWQ-LAYERS {errors}` (`compare_layers`);
- `no-act-scales DIR TOKENIZER`: `AWQ-LOAD-REFUSED <line>` or `AWQ-LOAD-ACCEPTED`: what the
  plugin's weight loader says of the checkpoint without act scales (no 4-bit kernel needed).
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.tiny_mpt import TinyMpt, build_reference, save_checkpoint

GROUP_SIZE = 64
# CPUWNA16 (vLLM's 4-bit kernel on CPU) wants every per-rank input and output size a multiple
# of 32: d_model 256 with 2 heads of 128 keeps that at tensor parallel 2.
AWQ_SHAPE = dict(d_model=256, n_heads=2)
LINEARS = ("attn.Wqkv", "attn.out_proj", "ffn.up_proj", "ffn.down_proj")


class ScaledGelu(nn.Module):
    def __init__(self, scales: torch.Tensor) -> None:
        super().__init__()
        self.scales = scales

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(x) / self.scales


def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, in) float weight → AWQ (q [in, out], zeros [in/g, out], scales fp16 [in/g, out],
    dequantized (out, in) float32)."""
    w = weight.t().contiguous()  # AWQ stores input rows
    rows, cols = w.shape
    groups = w.view(rows // GROUP_SIZE, GROUP_SIZE, cols)
    low, high = groups.amin(dim=1), groups.amax(dim=1)
    scales = ((high - low) / 15).clamp(min=1e-4).half()
    zeros = (-low / scales.float()).round().clamp(0, 15)
    q = (groups / scales.float()[:, None, :] + zeros[:, None, :]).round().clamp(0, 15)
    dequantized = (q - zeros[:, None, :]) * scales.float()[:, None, :]
    return (q.view(rows, cols).int(), zeros.int(), scales, dequantized.view(rows, cols).t().contiguous())


def make_tiny_awq_mpt(directory: Path, tokenizer_file: Path, seed: int = 0, act_scales: bool = True):
    """Write the checkpoint (without `ffn.act.scales` when `act_scales` is false); return
    (directory, reference model with the AWQ weights and the act scales)."""
    from safetensors.torch import save_file
    from vllm.model_executor.layers.quantization.utils.quant_utils import awq_pack

    spec = TinyMpt(**AWQ_SHAPE, seed=seed)
    model = build_reference(spec)
    save_checkpoint(model, spec, directory, tokenizer_file)  # config, tokenizer (weights replaced)
    for stale in directory.glob("*.safetensors"):
        stale.unlink()
    generator = torch.Generator().manual_seed(seed + 1)
    tensors: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for index, block in enumerate(model.transformer.blocks):
            prefix = f"transformer.blocks.{index}"
            scales_of_block = 0.5 + 1.5 * torch.rand(block.ffn.up_proj.out_features, generator=generator)
            scales_of_block = scales_of_block.half().float()  # what the fp16 checkpoint holds
            block.ffn.down_proj.weight.mul_(scales_of_block[None, :])  # AWQ: inputs of down_proj × s
            block.ffn.act = ScaledGelu(scales_of_block)
            if act_scales:
                tensors[f"{prefix}.ffn.act.scales"] = scales_of_block.half()
            for name in LINEARS:
                linear = block.get_submodule(name)
                q, zeros, scales, dequantized = quantize(linear.weight)
                rows, cols = q.shape
                tensors[f"{prefix}.{name}.qweight"] = awq_pack(q, 4, rows, cols)
                tensors[f"{prefix}.{name}.qzeros"] = awq_pack(zeros, 4, rows // GROUP_SIZE, cols)
                tensors[f"{prefix}.{name}.scales"] = scales
                linear.weight.copy_(dequantized)
            for norm in ("norm_1", "norm_2"):
                tensors[f"{prefix}.{norm}.weight"] = block.get_submodule(norm).weight.half()
        tensors["transformer.wte.weight"] = model.transformer.wte.weight.half()
        tensors["transformer.norm_f.weight"] = model.transformer.norm_f.weight.half()
        # The reference computes with exactly the fp16 values the checkpoint stores.
        for name, param in model.named_parameters():
            if not any(name.endswith(f"{linear}.weight") for linear in LINEARS):
                param.copy_(param.half().float())
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / "model.safetensors"))
    config = json.loads((directory / "config.json").read_text())
    config["torch_dtype"] = "float16"
    config["quantization_config"] = {
        "quant_method": "awq", "bits": 4, "group_size": GROUP_SIZE, "zero_point": True, "version": "gemm",
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory, model


def reference_without_act_scales(model):
    """The same weights with a plain GELU: what a loader that dropped `ffn.act.scales` runs."""
    plain = copy.deepcopy(model)
    for block in plain.transformer.blocks:
        block.ffn.act = nn.GELU()
    return plain


@contextlib.contextmanager
def our_model(directory: Path) -> Iterator[tuple[Any, Any]]:
    """Our vLLM MPT built for the checkpoint in this process (one rank, gloo, float16), its
    weights not loaded yet, and vLLM's config for it. In a child process only: it initialises
    vLLM's distributed state."""
    import socket

    from vllm.config import set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.engine.arg_utils import EngineArgs
    from vllm.utils.torch_utils import set_default_torch_dtype

    import server.models

    server.models.register()
    config = EngineArgs(model=str(directory), skip_tokenizer_init=True, dtype="float16", enforce_eager=True)
    config = config.create_engine_config()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with set_current_vllm_config(config):
        init_distributed_environment(1, 0, f"tcp://127.0.0.1:{port}", 0, backend="gloo")
        initialize_model_parallel(1, 1)
        from server.models.mpt import MptForCausalLM

        with set_default_torch_dtype(torch.float16):
            ours = MptForCausalLM(vllm_config=config)
        yield ours, config


def compare_layers(directory: Path, model) -> dict[str, float]:
    """Our vLLM MPT (`our_model`), its weights loaded by its own loader and vLLM's AWQ kernel:
    each block's MLP, fused Wqkv and out_proj against the reference's direct computation, in
    float16 (AWQ's dtype), on random inputs."""
    from safetensors.torch import load_file
    from vllm.model_executor.model_loader.utils import process_weights_after_loading

    errors = {"mlp": 0.0, "mlp_without_act_scales": 0.0, "wqkv": 0.0, "out_proj": 0.0, "scale": 0.0}
    with our_model(directory) as (ours, config):
        ours.load_weights(load_file(str(directory / "model.safetensors")).items())
        process_weights_after_loading(ours, config.model_config, torch.device("cpu"))
        x = torch.randn(7, AWQ_SHAPE["d_model"], generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            for block, reference in zip(ours.transformer.blocks, model.transformer.blocks):
                ffn = reference.ffn
                want = ffn.down_proj(ffn.act(ffn.up_proj(x)))
                plain = ffn.down_proj(nn.functional.gelu(ffn.up_proj(x)))
                got = block.ffn(x.half()).float()
                errors["mlp"] = max(errors["mlp"], (got - want).abs().max().item())
                errors["mlp_without_act_scales"] = max(errors["mlp_without_act_scales"], (plain - want).abs().max().item())
                errors["scale"] = max(errors["scale"], want.abs().max().item())
                for name, ours_linear, ref_linear in (("wqkv", block.attn.Wqkv, reference.attn.Wqkv),
                                                      ("out_proj", block.attn.out_proj, reference.attn.out_proj)):
                    got_linear = ours_linear(x.half())[0].float()
                    errors[name] = max(errors[name], (got_linear - ref_linear(x)).abs().max().item())
    return errors


def load_refusal(directory: Path) -> str | None:
    """What our model's weight loader raises for the checkpoint (None when it loads). Loading
    runs no 4-bit kernel, so this works on every CPU build."""
    from safetensors.torch import load_file

    with our_model(directory) as (ours, _):
        try:
            ours.load_weights(load_file(str(directory / "model.safetensors")).items())
        except ValueError as error:
            return str(error)
    return None


def _layers(directory: Path, tokenizer_file: Path) -> None:
    from server.engine.platform import (
        CPU_WNA16_OP,
        QuantizationRefused,
        cpu_kernel_build,
        cpu_op_available,
        refuse_unservable_quantization,
    )

    directory, reference_model = make_tiny_awq_mpt(directory, tokenizer_file)
    kernel = {"build": cpu_kernel_build(), CPU_WNA16_OP: cpu_op_available(CPU_WNA16_OP)}
    print("AWQ-KERNEL " + json.dumps(kernel), flush=True)
    try:
        refuse_unservable_quantization(directory)  # what the server checks before its engine
    except QuantizationRefused as refusal:
        print(f"AWQ-REFUSED {refusal}")
        return
    print("AWQ-LAYERS " + json.dumps(compare_layers(directory, reference_model)))


def _no_act_scales(directory: Path, tokenizer_file: Path) -> None:
    directory, _ = make_tiny_awq_mpt(directory, tokenizer_file, act_scales=False)
    refusal = load_refusal(directory)
    print("AWQ-LOAD-ACCEPTED" if refusal is None else f"AWQ-LOAD-REFUSED {refusal}")


if __name__ == "__main__":
    import sys

    mode, directory_arg, tokenizer_arg = sys.argv[1:4]
    {"layers": _layers, "no-act-scales": _no_act_scales}[mode](Path(directory_arg), Path(tokenizer_arg))
