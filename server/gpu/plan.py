"""`airoboros-server plan`: will the model fit these GPUs, and how well? (maths: `sizing`)

    airoboros-server plan --gpu h100-sxm --tensor-parallel-size 2
    airoboros-server plan --model DIR --gpu-memory-gib 44.5 --gpu-bandwidth-tbs 0.864 --gpu-capability 8.9
    airoboros-server plan --gpu a10 --json
    airoboros-server plan --table            the common set-ups, as a Markdown table
    airoboros-server plan --gpu h100-sxm --kv-offload-gib 200   and a host-RAM KV tier of 200 GiB

Reads config.json only (no weights); without `--model` it plans MPT-30B's shape. Exits 0 when
the set-up works (with a warning when fewer than two full-length sequences fit), 1 when it
cannot work, saying what to change. `serve` runs the same check at start on GPU hosts.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from server.mpt.attention import SELECTABLE, normalise_backend_setting, serving_dtype
from server.mpt.catalog import CATALOG, GIB, Gpu, custom_gpu, find_gpu, parse_capability
from server.mpt.sizing import (
    MPT_30B, PREFILL_EFFICIENCY, QUANTIZED_LINEAR_BITS, HostTier, Plan, Setup, describe_weights, make_plan,
)

logger = logging.getLogger(__name__)


class GpuPlanRefused(ValueError):
    """The configuration cannot serve on this host's GPUs; the message says what to change."""


def _config(model_dir: Path | None) -> dict[str, Any]:
    if model_dir is None:
        return {}
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    config = json.loads(path.read_text())
    if config.get("model_type") != "mpt":
        raise ValueError(f"{path}: plan sizes MPT checkpoints, not model_type {config.get('model_type')!r}")
    return config


def quantization_of(config: dict[str, Any]) -> str:
    method = str((config.get("quantization_config") or {}).get("quant_method", "none")).lower()
    if method in ("awq", "gptq", "fp8"):
        return method
    if method != "none":
        raise ValueError(f"quantization {method!r} is not one plan knows: {', '.join(QUANTIZED_LINEAR_BITS)}")
    return "none"


def setup_from_args(args: argparse.Namespace) -> Setup:
    from server.mpt.config import MptSpec

    config = _config(args.model)
    spec = MptSpec.from_config(config) if config else MPT_30B
    if args.gpu:
        gpu = find_gpu(args.gpu)
        if args.gpu_memory_gib or args.gpu_bandwidth_tbs or args.gpu_capability:
            raise ValueError("give --gpu, or --gpu-memory-gib with --gpu-capability, not both")
    elif args.gpu_memory_gib and args.gpu_capability:
        gpu = custom_gpu(args.gpu_memory_gib, args.gpu_bandwidth_tbs, parse_capability(args.gpu_capability))
    else:
        raise ValueError(f"give --gpu ({', '.join(CATALOG)}), or --gpu-memory-gib and --gpu-capability")
    if args.gpu_tflops is not None:  # a catalog GPU's figures may be overridden by measured ones
        gpu = replace(gpu, bf16_tflops=args.gpu_tflops)
    if args.gpu_host_link_gbs is not None:
        gpu = replace(gpu, host_link_gbs=args.gpu_host_link_gbs)
    for flag, value in (("--kv-offload-gib", args.kv_offload_gib), ("--prefill-efficiency", args.prefill_efficiency)):
        if value is not None and value <= 0:
            raise ValueError(f"{flag} must be above 0, not {value:g}")
    if args.prefill_efficiency > 1:
        raise ValueError(
            f"--prefill-efficiency is a share of the GPU's throughput, at most 1, not {args.prefill_efficiency:g}"
        )
    quantization = args.quantization or quantization_of(config)
    dtype = serving_dtype(args.dtype, {**config, "torch_dtype": config.get("torch_dtype", "bfloat16")})
    if quantization in ("awq", "gptq"):
        dtype = "float16"
    return Setup(
        spec=spec, gpu=gpu, tensor_parallel_size=args.tensor_parallel_size, dtype=dtype,
        quantization=quantization, max_model_len=args.max_model_len or spec.max_seq_len,
        gpu_memory_utilization=args.gpu_memory_utilization, overhead_gib=args.overhead_gib,
        attention_backend=normalise_backend_setting(args.attention_backend),
        kv_offload_gib=args.kv_offload_gib, prefill_efficiency=args.prefill_efficiency,
    )


def host_tier_json(tier: HostTier | None, setup: Setup) -> dict[str, Any] | None:
    if tier is None:
        return None
    return {
        "kv_offload_gib": tier.gib,
        "host_bytes_per_block": tier.row_bytes,
        "tokens": tier.tokens,
        "max_len_sequences": round(tier.max_len_sequences, 2),
        "max_len_sequence_gib": round(tier.sequence_bytes / GIB, 2),
        "max_len_sequence_gib_per_gpu": round(tier.sequence_bytes_per_gpu / GIB, 2),
        "host_link_gbs_per_gpu": setup.gpu.host_link_gbs,
        "gpu_bf16_tflops": setup.gpu.bf16_tflops,
        "prefill_efficiency": setup.prefill_efficiency,
        "load_s_per_max_len_sequence": _round(tier.load_s, 3),
        "prefill_s_per_max_len_sequence": _round(tier.prefill_s, 3),
        "load_speedup_over_prefill": _round(tier.speedup, 1),
    }


def as_json(plan: Plan) -> dict[str, Any]:
    setup = plan.setup
    return {
        "gpu": setup.gpu.name,
        "gpu_memory_gib": round(setup.gpu.memory_gib, 2),
        "gpu_bandwidth_tbs": setup.gpu.bandwidth_tbs,
        "compute_capability": setup.gpu.capability_text,
        "tensor_parallel_size": setup.tensor_parallel_size,
        "dtype": setup.dtype,
        "quantization": setup.quantization,
        "max_model_len": setup.max_model_len,
        "gpu_memory_utilization": setup.gpu_memory_utilization,
        "weights_gib_per_gpu": round(plan.weights_bytes_per_gpu / GIB, 2),
        "kv_bytes_per_token": plan.kv_bytes_per_token,
        "kv_bytes_per_token_per_gpu": plan.kv_bytes_per_token_per_gpu,
        "overhead_gib_per_gpu": setup.overhead_gib,
        "kv_cache_gib_per_gpu": round(plan.kv_cache_bytes_per_gpu / GIB, 2),
        "kv_cache_tokens": plan.kv_cache_tokens,
        "max_len_sequences": round(plan.max_len_sequences, 2),
        "attention_backend": plan.attention.backend if plan.attention else None,
        "flash_attn_version": plan.attention.flash_attn_version if plan.attention else None,
        "decode_tokens_per_s_bound": _round(plan.decode_bound),
        "decode_tokens_per_s_bound_at_max_len": _round(plan.decode_bound_at_max_len),
        "host_kv_tier": host_tier_json(plan.host_tier, setup),
        "verdict": plan.verdict,
        "problems": plan.problems,
        "suggestions": plan.suggestions,
    }


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def host_tier_lines(tier: HostTier, setup: Setup) -> list[str]:
    lines = [
        f"  host-RAM KV tier       {tier.gib:g} GiB = {tier.tokens:,} tokens = {tier.max_len_sequences:.2f} "
        f"full-length sequences kept warm (whole-model KV, {tier.row_bytes:,} B per 16-token block; "
        "the size is for all GPUs together)",
    ]
    sequence = f"a full {setup.max_model_len:,}-token KV ({tier.sequence_bytes / GIB:.1f} GiB"
    sequence += f", {tier.sequence_bytes_per_gpu / GIB:.2f} GiB per GPU)" if setup.tensor_parallel_size > 1 else ")"
    gpu = setup.gpu
    load = (
        f"loads in {tier.load_s:.3f} s over PCIe (~{gpu.host_link_gbs:g} GB/s per GPU)"
        if tier.load_s else "load time unknown (no host link figure: --gpu-host-link-gbs)"
    )
    prefill = (
        f"prefilling it takes ~{tier.prefill_s:.3f} s (2 × {setup.spec.parameter_count() / 1e9:.2f}B parameters × "
        f"{setup.max_model_len:,} tokens at {setup.prefill_efficiency:g} of {gpu.bf16_tflops:g} TFLOP/s"
        f"{' per GPU' if setup.tensor_parallel_size > 1 else ''})"
        if tier.prefill_s else "prefill time unknown (no TFLOP/s figure: --gpu-tflops)"
    )
    lines.append(f"  cached turn            {sequence}: {load}; {prefill}")
    if tier.speedup:
        lines.append(
            f"                         reloading a cached turn is ~{tier.speedup:.1f}× faster than prefilling it again"
        )
    return lines


def as_text(plan: Plan) -> str:
    setup = plan.setup
    attention = plan.attention
    backend = "none" if attention is None else attention.backend or "vLLM's default"
    if attention and attention.flash_attn_version:
        backend += f" (FlashAttention {attention.flash_attn_version})"
    bound = "unknown (no bandwidth given)"
    if plan.decode_bound:
        bound = (
            f"{plan.decode_bound:.0f} tokens/s (weights only; {plan.decode_bound_at_max_len:.0f} "
            f"with a full {setup.max_model_len:,}-token context)"
        )
    lines = [
        f"MPT ({setup.spec.n_layers} layers, d_model {setup.spec.d_model}, head size "
        f"{setup.spec.head_dim}) on {setup.gpus_text} (compute capability {setup.gpu.capability_text}), "
        f"{describe_weights(setup)}, context {setup.max_model_len:,}, "
        f"--gpu-memory-utilization {setup.gpu_memory_utilization:g}",
        f"  weights per GPU        {plan.weights_bytes_per_gpu / GIB:.1f} GiB",
        f"  KV cache per token     {plan.kv_bytes_per_token:,} B ({plan.kv_bytes_per_token_per_gpu:,} B per GPU)",
        f"  KV cache per GPU       {plan.kv_cache_bytes_per_gpu / GIB:.1f} GiB "
        f"({setup.gpu_memory_utilization:g} × {setup.gpu.memory_gib:.1f} GiB − weights − "
        f"~{setup.overhead_gib:g} GiB for vLLM's own work) = {plan.kv_cache_tokens:,} tokens",
        f"  full-length sequences  {plan.max_len_sequences:.2f} at once",
        f"  attention              {backend}",
        f"  batch-1 decode bound   {bound}",
    ]
    if plan.host_tier is not None:
        lines.extend(host_tier_lines(plan.host_tier, setup))
    if plan.verdict == "fits":
        lines.append("fits")
    else:
        lines.append(("WARNING: " if plan.verdict == "warn" else "CANNOT WORK: ") + "; ".join(plan.problems))
        lines.extend(f"  change: {suggestion}" for suggestion in plan.suggestions)
    return "\n".join(lines)


def refusal(plan: Plan) -> str:
    """One paragraph: what fails and what to change."""
    return (
        f"MPT on {plan.setup.gpus_text} cannot work: " + "; ".join(plan.problems)
        + ". Change: " + "; or ".join(plan.suggestions)
    )


COMMON_SETUPS = (
    ("h100-sxm", 2, "none"), ("h100-sxm", 1, "none"), ("h200", 1, "none"), ("h200", 2, "none"),
    ("a100-80gb", 2, "none"), ("a100-80gb", 1, "awq"), ("l40s", 4, "none"), ("l40s", 1, "awq"),
    ("a10", 4, "none"), ("a10", 1, "awq"), ("b200", 1, "none"),
)


def table(base: Setup) -> str:
    rows = [
        "| GPUs | weights | weights/GPU | KV tokens | 8k sequences | attention | batch-1 bound | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, tp, quantization in COMMON_SETUPS:
        dtype = "float16" if quantization != "none" else base.dtype
        setup = replace(base, gpu=find_gpu(key), tensor_parallel_size=tp, quantization=quantization, dtype=dtype)
        plan = make_plan(setup, suggest=False)
        attention = plan.attention.backend if plan.attention else "none"
        if plan.attention and plan.attention.flash_attn_version:
            attention += f" (FA{plan.attention.flash_attn_version})"
        rows.append(
            f"| {setup.gpus_text} | {describe_weights(setup)} | {plan.weights_bytes_per_gpu / GIB:.1f} GiB | "
            f"{plan.kv_cache_tokens:,} | {plan.max_len_sequences:.1f} | {attention} | "
            f"{plan.decode_bound:.0f} tok/s | {plan.verdict} |"
        )
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="airoboros-server plan", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="checkpoint directory (config.json); default: MPT-30B's shape")
    parser.add_argument("--gpu", help=f"one of: {', '.join(CATALOG)}")
    parser.add_argument("--gpu-memory-gib", type=float, help="another GPU: its total memory, GiB")
    parser.add_argument("--gpu-bandwidth-tbs", type=float, help="another GPU: memory bandwidth, TB/s")
    parser.add_argument("--gpu-capability", help="another GPU: compute capability, e.g. 8.9")
    parser.add_argument("--tensor-parallel-size", type=int, default=1, choices=(1, 2, 4, 8))
    parser.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"))
    parser.add_argument("--quantization", choices=tuple(QUANTIZED_LINEAR_BITS), help="default: config.json's")
    parser.add_argument("--max-model-len", type=int, help="context length (default: the checkpoint's)")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--overhead-gib", type=float, default=2.0, help="vLLM's own memory per GPU (estimate)")
    parser.add_argument("--attention-backend", default="auto", help=", ".join(SELECTABLE))
    parser.add_argument(
        "--kv-offload-gib", type=float,
        help="host RAM for the KV cache tier (serve's --kv-offload-gib), GiB for all GPUs together",
    )
    parser.add_argument("--gpu-tflops", type=float, help="dense bf16 TFLOP/s per GPU (default: the catalog's)")
    parser.add_argument(
        "--gpu-host-link-gbs", type=float,
        help="effective host-to-GPU GB/s per GPU (default: the catalog's, ~50 PCIe Gen5, ~25 Gen4)",
    )
    parser.add_argument(
        "--prefill-efficiency", type=float, default=PREFILL_EFFICIENCY,
        help=f"share of the GPU's TFLOP/s a long prefill reaches (default {PREFILL_EFFICIENCY:g})",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as a JSON object")
    parser.add_argument("--table", action="store_true", help="common set-ups as a Markdown table")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.table and not args.gpu and not args.gpu_memory_gib:
        args.gpu = "h100-sxm"  # any: the table replaces it
    try:
        setup = setup_from_args(args)
    except ValueError as error:
        print(f"airoboros-server plan: {error}", file=sys.stderr)
        return 2
    if args.table:
        print(table(setup))
        return 0
    plan = make_plan(setup)
    print(json.dumps(as_json(plan), indent=2) if args.json else as_text(plan))
    return 1 if plan.verdict == "impossible" else 0


def check_at_start(settings: Any, model_dir: Path, gpu: Gpu | None) -> None:
    """On a GPU host (`gpu`, from `server.engine.platform.current_gpu`), refuse a hopeless MPT
    configuration before vLLM tries (and fails obscurely)."""
    if gpu is None:
        return
    config = json.loads((Path(model_dir) / "config.json").read_text())
    if config.get("model_type") != "mpt":
        return
    from server.mpt.config import MptSpec

    spec = MptSpec.from_config(config)
    quantization = quantization_of(config)
    plan = make_plan(Setup(
        spec=spec, gpu=gpu, tensor_parallel_size=settings.tensor_parallel_size,
        dtype=serving_dtype(settings.dtype, config), quantization=quantization,
        max_model_len=settings.max_model_len or spec.max_seq_len,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        attention_backend=settings.attention_backend,
        kv_offload_gib=getattr(settings, "kv_offload_gib", None),
    ))
    if plan.verdict == "impossible":
        raise GpuPlanRefused(refusal(plan))
    if plan.verdict == "warn":
        logger.warning("%s; to change: %s", "; ".join(plan.problems), "; or ".join(plan.suggestions))
    logger.info(
        "plan: %.1f GiB of weights per GPU, about %d KV cache tokens (%.1f full-length sequences)",
        plan.weights_bytes_per_gpu / GIB, plan.kv_cache_tokens, plan.max_len_sequences,
    )
    if (tier := plan.host_tier) is not None:
        logger.info(
            "plan: the host-RAM KV tier of %g GiB holds about %d tokens (%.1f full-length sequences)%s",
            tier.gib, tier.tokens, tier.max_len_sequences,
            f"; a cached full-length turn loads in about {tier.load_s:.2f} s" if tier.load_s else "",
        )


if __name__ == "__main__":
    sys.exit(main())
