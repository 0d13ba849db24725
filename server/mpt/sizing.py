"""The sizing maths of `airoboros-server plan`: weights, KV cache, sequences and the decode bound.

Per GPU, vLLM gets `--gpu-memory-utilization` × the card's memory. From that it takes the
weights of its tensor-parallel shard, its own working memory (activations at the batch it
profiles, CUDA graphs, NCCL and cuBLAS buffers, the CUDA context: estimated here at
`overhead_gib`, 2 GiB by default; vLLM measures it at start and logs "Available KV cache
memory"), and the rest is KV cache in 16-token blocks. One token of KV costs
2 (K, V) × layers × KV heads × head size × bytes: MPT-30B in bf16 48 × 2 × 64 × 112 × 2 =
1,376,256 B (1.3125 MiB), so one 8,192-token sequence needs 10.5 GiB.

Batch-1 decoding reads every weight once per token (the tied embedding as the LM head), and the
GPUs of a tensor-parallel group read their shards at once: tokens/s ≤ bandwidth ÷ weight bytes
per GPU. Measured on an H200 (4.8 TB/s by the spec sheet, 4.2 TB/s for a plain copy): streaming
MPT-30B's bf16 weights took 15.2 ms per step (65.9/s, 82% of the 80/s bound), one TP2 rank's
half 8.2 ms (122/s, 76% of 160/s), before attention, all-reduce and sampling.

The host-RAM KV tier (`--kv-offload-gib`, vLLM's native CPU offloading) keeps KV blocks evicted
from the GPUs in pinned host memory, so a conversation that comes back reloads its prefix instead
of prefilling it again. vLLM sizes it for the whole replica: `cpu_bytes_to_use` = the GiB × 2^30,
divided into rows of one KV block of every tensor-parallel rank (a rank's block bytes × the
world size), each row rounded up to the host page (vllm/v1/kv_offload/cpu/spec.py:102-119). So
a row holds one 16-token block of the whole model, all layers and all heads, and N GiB hold
N × 2^30 ÷ (16 × whole-model KV bytes per token) blocks, whatever the tensor-parallel size. A
cached turn costs the transfer of its KV over PCIe, each GPU its own shard over its own x16
link at once (catalog: ~50 GB/s Gen5, ~25 GB/s Gen4), against prefilling those tokens again,
estimated from compute as 2 × parameters × tokens ÷ (GPUs × dense bf16 TFLOP/s × an efficiency,
0.5 by default). That estimate leaves out attention's quadratic work (about a tenth more at 8k
tokens for MPT-30B) and counts the LM head for every token (about 1% too many): a lower bound
on the prefill it saves, so the speed-up stated is not flattering.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from server.mpt.attention import AttentionChoice, AttentionRefused, ModelAttention, Target, choose_attention
from server.mpt.catalog import GIB, Gpu
from server.mpt.config import MptSpec

KV_BLOCK_TOKENS = 16
TENSOR_PARALLEL_SIZES = (1, 2, 4, 8)
# Bits per quantized linear weight: 4-bit values plus an fp16 scale and a 4-bit zero per group
# of 128 (AWQ, GPTQ); fp8 keeps one scale per channel (negligible).
QUANTIZED_LINEAR_BITS = {"none": None, "awq": 4 + 20 / 128, "gptq": 4 + 20 / 128, "fp8": 8.0}
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
# vLLM rounds each host row of offloaded KV up to the page (SharedOffloadRegion's
# BLOCK_SIZE_ALIGNMENT = mmap.PAGESIZE: 4 KiB on x86-64 and Grace hosts with 4 KiB pages).
HOST_PAGE_BYTES = 4096
# Model FLOP utilisation assumed for a long prefill (dense bf16 GEMMs at thousands of tokens).
PREFILL_EFFICIENCY = 0.5

MPT_30B = MptSpec(
    d_model=7168, n_heads=64, kv_n_heads=64, n_layers=48, ffn_hidden_size=4 * 7168,
    vocab_size=50432, max_seq_len=8192, layer_norm_eps=1e-5, bias=False, clip_qkv=None,
    qk_ln=False, softmax_scale=112**-0.5, alibi_bias_max=8.0, logit_scale=1.0,
    tie_word_embeddings=True,
)


@dataclass(frozen=True)
class Setup:
    spec: MptSpec
    gpu: Gpu
    tensor_parallel_size: int = 1
    dtype: str = "bfloat16"  # what the model computes in (and the KV cache is stored in)
    quantization: str = "none"
    max_model_len: int = 8192
    gpu_memory_utilization: float = 0.9
    overhead_gib: float = 2.0
    attention_backend: str = "auto"
    kv_offload_gib: float | None = None  # the host-RAM KV tier, whole replica; None: off
    prefill_efficiency: float = PREFILL_EFFICIENCY

    @property
    def gpus_text(self) -> str:
        return f"{self.tensor_parallel_size} × {self.gpu.name}"


@dataclass(frozen=True)
class HostTier:
    """The host-RAM KV tier of a set-up: what it holds, and what a cached turn costs."""

    gib: float
    row_bytes: int  # one 16-token block of every rank, page-aligned: vLLM's unit of host KV
    tokens: int
    max_len_sequences: float
    sequence_bytes: int  # KV of one full-length sequence, whole model
    sequence_bytes_per_gpu: int
    load_s: float | None  # that sequence's KV host → GPUs; None without a host link figure
    prefill_s: float | None  # prefilling it again; None without a TFLOP/s figure

    @property
    def speedup(self) -> float | None:
        return self.prefill_s / self.load_s if self.load_s and self.prefill_s else None


@dataclass
class Plan:
    setup: Setup
    weights_bytes_per_gpu: int
    kv_bytes_per_token: int  # the whole model, all GPUs together
    kv_bytes_per_token_per_gpu: int
    vllm_bytes_per_gpu: int
    kv_cache_bytes_per_gpu: int
    kv_cache_tokens: int
    max_len_sequences: float
    attention: AttentionChoice | None
    attention_problem: str | None
    decode_bound: float | None
    decode_bound_at_max_len: float | None
    host_tier: HostTier | None = None
    verdict: str = "fits"  # fits, warn, impossible
    problems: list[str] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)


def weight_bytes_per_gpu(spec: MptSpec, tp: int, dtype: str, quantization: str) -> int:
    """Bytes of one tensor-parallel rank's weights (embedding and linear layers sharded)."""
    d, head = spec.d_model, spec.head_dim
    kv_heads = max(1, spec.kv_n_heads // tp)  # fewer KV heads than ranks: each rank keeps one
    qkv_width = (spec.n_heads // tp + 2 * kv_heads) * head
    linear = d * qkv_width + (d // tp) * d + 2 * d * (spec.ffn_hidden_size // tp)
    bias = int(spec.bias)
    plain = 2 * d * (1 + bias) + bias * (qkv_width + 2 * d + spec.ffn_hidden_size // tp)
    if spec.qk_ln:  # the norm spans all heads: full width on every rank
        plain += (d + spec.kv_n_heads * head) * (1 + bias)
    embeddings = math.ceil(spec.vocab_size / tp) * d * (1 if spec.tie_word_embeddings else 2)
    dtype_bytes = DTYPE_BYTES[dtype]
    linear_bits = QUANTIZED_LINEAR_BITS[quantization] or 8 * dtype_bytes
    final_norm = d * (1 + bias)
    return int(
        spec.n_layers * linear * linear_bits / 8
        + (spec.n_layers * plain + embeddings + final_norm) * dtype_bytes
    )


def kv_bytes_per_token(spec: MptSpec, dtype: str, tp: int = 1) -> int:
    kv_heads = spec.kv_n_heads if tp == 1 else max(1, spec.kv_n_heads // tp)
    return 2 * spec.n_layers * kv_heads * spec.head_dim * DTYPE_BYTES[dtype]


def host_tier(setup: Setup) -> HostTier | None:
    """What `--kv-offload-gib` holds and saves for this set-up; None when it is off."""
    if setup.kv_offload_gib is None:
        return None
    spec, gpu, tp = setup.spec, setup.gpu, setup.tensor_parallel_size
    per_token_gpu = kv_bytes_per_token(spec, setup.dtype, tp)
    row = -(-KV_BLOCK_TOKENS * per_token_gpu * tp // HOST_PAGE_BYTES) * HOST_PAGE_BYTES
    tokens = int(setup.kv_offload_gib * GIB) // row * KV_BLOCK_TOKENS
    sequence_per_gpu = setup.max_model_len * per_token_gpu
    prefill_flops = 2 * spec.parameter_count() * setup.max_model_len
    return HostTier(
        gib=setup.kv_offload_gib,
        row_bytes=row,
        tokens=tokens,
        max_len_sequences=tokens / setup.max_model_len,
        sequence_bytes=sequence_per_gpu * tp,
        sequence_bytes_per_gpu=sequence_per_gpu,
        load_s=sequence_per_gpu / (gpu.host_link_gbs * 1e9) if gpu.host_link_gbs else None,
        prefill_s=(
            prefill_flops / (tp * gpu.bf16_tflops * 1e12 * setup.prefill_efficiency)
            if gpu.bf16_tflops else None
        ),
    )


def make_plan(setup: Setup, suggest: bool = True) -> Plan:
    spec, gpu, tp = setup.spec, setup.gpu, setup.tensor_parallel_size
    weights = weight_bytes_per_gpu(spec, tp, setup.dtype, setup.quantization)
    per_token_gpu = kv_bytes_per_token(spec, setup.dtype, tp)
    vllm_bytes = int(setup.gpu_memory_utilization * gpu.memory_bytes)
    kv_cache = vllm_bytes - weights - int(setup.overhead_gib * GIB)
    tokens = max(0, kv_cache // per_token_gpu // KV_BLOCK_TOKENS * KV_BLOCK_TOKENS)
    attention, attention_problem = _attention(setup)
    bandwidth = gpu.bandwidth_tbs * 1e12 if gpu.bandwidth_tbs else None
    plan = Plan(
        setup=setup,
        weights_bytes_per_gpu=weights,
        kv_bytes_per_token=kv_bytes_per_token(spec, setup.dtype),
        kv_bytes_per_token_per_gpu=per_token_gpu,
        vllm_bytes_per_gpu=vllm_bytes,
        kv_cache_bytes_per_gpu=max(0, kv_cache),
        kv_cache_tokens=tokens,
        max_len_sequences=tokens / setup.max_model_len,
        attention=attention,
        attention_problem=attention_problem,
        decode_bound=bandwidth / weights if bandwidth else None,
        decode_bound_at_max_len=(
            bandwidth / (weights + setup.max_model_len * per_token_gpu) if bandwidth else None
        ),
        host_tier=host_tier(setup),
    )
    _judge(plan)
    if suggest and plan.verdict != "fits":
        plan.suggestions = _suggestions(plan)
    return plan


def _attention(setup: Setup) -> tuple[AttentionChoice | None, str | None]:
    target = Target("cuda", setup.gpu.capability)
    model = ModelAttention(setup.spec.head_dim, True, setup.dtype)
    try:
        return choose_attention(setup.attention_backend, target, model), None
    except AttentionRefused as refused:
        return None, str(refused)


def _judge(plan: Plan) -> None:
    setup = plan.setup
    gib = GIB
    if setup.spec.n_heads % setup.tensor_parallel_size:
        plan.problems.append(
            f"tensor parallel {setup.tensor_parallel_size} does not divide the model's "
            f"{setup.spec.n_heads} attention heads"
        )
    if plan.weights_bytes_per_gpu + setup.overhead_gib * gib > plan.vllm_bytes_per_gpu:
        plan.problems.append(
            f"the {describe_weights(setup)} weights need {plan.weights_bytes_per_gpu / gib:.1f} GiB "
            f"per GPU, and vLLM gets {plan.vllm_bytes_per_gpu / gib:.1f} GiB of each "
            f"({setup.gpu_memory_utilization:g} × {setup.gpu.memory_gib:.1f} GiB) with "
            f"~{setup.overhead_gib:g} GiB of that for its own work"
        )
    elif plan.max_len_sequences < 1:
        plan.problems.append(
            f"not one {setup.max_model_len:,}-token sequence fits: its KV cache needs "
            f"{setup.max_model_len * plan.kv_bytes_per_token_per_gpu / gib:.1f} GiB per GPU, "
            f"{plan.kv_cache_bytes_per_gpu / gib:.1f} GiB is left after the weights"
        )
    if plan.attention_problem:
        plan.problems.append(plan.attention_problem)
    if plan.problems:
        plan.verdict = "impossible"
    elif plan.max_len_sequences < 2:
        plan.verdict = "warn"
        plan.problems.append(
            f"only about {plan.max_len_sequences:.1f} full-length ({setup.max_model_len:,}-token) "
            "sequence fits at once: long requests will queue behind each other"
        )


def describe_weights(setup: Setup) -> str:
    return setup.dtype if setup.quantization == "none" else f"{setup.quantization} 4-bit".replace(
        "fp8 4-bit", "fp8"
    )


def _suggestions(plan: Plan) -> list[str]:
    setup = plan.setup
    wanted = 2.0 if plan.verdict == "warn" else 1.0
    suggestions = []
    for tp in TENSOR_PARALLEL_SIZES:
        if tp <= setup.tensor_parallel_size or setup.spec.n_heads % tp:
            continue
        bigger = make_plan(replace(setup, tensor_parallel_size=tp), suggest=False)
        if bigger.verdict != "impossible" and bigger.max_len_sequences >= wanted:
            suggestions.append(
                f"more GPUs: --tensor-parallel-size {tp} ({tp} × {setup.gpu.name}) holds "
                f"{bigger.max_len_sequences:.1f} full-length sequences"
            )
            break
    shorter = _shorter_context(setup, wanted)
    if shorter:
        suggestions.append(shorter)
    if setup.quantization == "none":
        quantized = replace(setup, quantization="awq", dtype="float16")
        plan_q = make_plan(quantized, suggest=False)
        if plan_q.verdict != "impossible":
            suggestions.append(
                f"quantization: a 4-bit AWQ or GPTQ checkpoint ({plan_q.weights_bytes_per_gpu / GIB:.1f} GiB "
                f"of weights per GPU) holds {plan_q.max_len_sequences:.1f} full-length sequences"
            )
        else:
            context = _shorter_context(quantized, 1.0, prefix="quantization: a 4-bit AWQ or GPTQ checkpoint with ")
            if context:
                suggestions.append(context)
    if not suggestions:
        suggestions.append("a GPU with more memory, or several (see `airoboros-server plan --table`)")
    return suggestions


def _shorter_context(setup: Setup, wanted: float, prefix: str = "a shorter context: ") -> str | None:
    length = (setup.max_model_len - 1) // 1024 * 1024
    while length >= 1024:
        plan = make_plan(replace(setup, max_model_len=length), suggest=False)
        if plan.verdict != "impossible" and plan.max_len_sequences >= wanted:
            return f"{prefix}--max-model-len {length} holds {plan.max_len_sequences:.1f} such sequences"
        length -= 1024
    return None
