"""MPT (MosaicML's decoder, e.g. MPT-30B) as a vLLM model, built on vLLM's current layers.

One block: x + attn(norm_1(x)), then + ffn(norm_2(x)); pre-LayerNorm, no positional embedding.
Positions come from ALiBi, applied inside vLLM's paged attention from per-head slopes
(`server.mpt.config.alibi_slopes`, MPT's own scheme), each tensor-parallel rank taking the slopes of
the heads it holds. The fused `Wqkv` is loaded as is into a `QKVParallelLinear` (its layout on
disk is [q | k | v], vLLM's too), optionally clamped (`clip_qkv`) and LayerNorm-ed over the whole
q and k (`qk_ln`, MosaicML's semantics: one norm over all heads, so under tensor parallelism the
shards are gathered first). Biases exist only when `no_bias` is false; `lm_head` is `wte` unless
the config unties it. Weight names are the checkpoint's: `transformer.wte`,
`transformer.blocks.N.{norm_1, attn.Wqkv, attn.q_ln, attn.k_ln, attn.out_proj, norm_2,
ffn.up_proj, ffn.act.scales (AutoAWQ), ffn.down_proj}`, `transformer.norm_f`.
Quantized checkpoints load through vLLM's quantized layers (the model carries `quant_config`);
AutoAWQ's activation scales are `server.models.awq`'s, and an AWQ checkpoint without them is
refused at load; backends that would drop ALiBi are refused at load (`server.mpt.attention`).
What vLLM's Model Runner V2 (the GPU default) asks of this class, and that it has it:
server/models/README.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice

import torch
from torch import nn

from vllm.compilation.decorators import support_torch_compile
from vllm.config import CacheConfig, VllmConfig
from vllm.distributed import (
    get_pp_group,
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
    tensor_model_parallel_all_gather,
)
from vllm.model_executor.layers.activation import get_act_fn
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.layernorm import LayerNorm
from vllm.model_executor.layers.linear import (
    ColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.quantization import QuantizationConfig
from vllm.model_executor.layers.vocab_parallel_embedding import (
    ParallelLMHead,
    VocabParallelEmbedding,
)
from vllm.model_executor.models.interfaces import SupportsPP
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    PPMissingLayer,
    make_empty_intermediate_tensors_factory,
    make_layers,
    maybe_prefix,
)
from vllm.sequence import IntermediateTensors

from server.models.attention_guard import refuse_alibi_unsafe_layer
from server.models.awq import AUTO_AWQ_METHODS, ScaledGelu, refuse_missing_act_scales
from server.mpt.config import MptSpec, alibi_slopes


class MptAttention(nn.Module):
    def __init__(
        self,
        spec: MptSpec,
        cache_config: CacheConfig | None,
        quant_config: QuantizationConfig | None,
        prefix: str,
    ):
        super().__init__()
        self.tp_size = get_tensor_model_parallel_world_size()
        self.tp_rank = get_tensor_model_parallel_rank()
        if spec.n_heads % self.tp_size:
            raise ValueError(
                f"MPT n_heads={spec.n_heads} is not divisible by tensor_parallel_size={self.tp_size}"
            )
        self.head_dim = spec.head_dim
        self.total_kv_heads = spec.kv_n_heads
        self.clip_qkv = spec.clip_qkv
        self.Wqkv = QKVParallelLinear(
            spec.d_model,
            spec.head_dim,
            spec.n_heads,
            spec.kv_n_heads,
            bias=spec.bias,
            quant_config=quant_config,
            prefix=f"{prefix}.Wqkv",
        )
        self.num_heads = self.Wqkv.num_heads  # on this rank
        self.num_kv_heads = self.Wqkv.num_kv_heads  # on this rank, replicated when fewer than ranks
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qk_ln = spec.qk_ln
        if spec.qk_ln:
            # Full-width weights on every rank: the norm spans all heads.
            self.q_ln = LayerNorm(spec.d_model, eps=spec.layer_norm_eps, bias=spec.bias)
            self.k_ln = LayerNorm(
                spec.kv_n_heads * spec.head_dim, eps=spec.layer_norm_eps, bias=spec.bias
            )
        first_head = self.tp_rank * self.num_heads
        slopes = alibi_slopes(spec.n_heads, spec.alibi_bias_max)
        self.attn = Attention(
            self.num_heads,
            self.head_dim,
            spec.softmax_scale,
            num_kv_heads=self.num_kv_heads,
            alibi_slopes=slopes[first_head : first_head + self.num_heads],
            cache_config=cache_config,
            quant_config=quant_config,
            prefix=f"{prefix}.attn",
        )
        refuse_alibi_unsafe_layer(self.attn)  # no backend may drop the positions silently
        self.out_proj = RowParallelLinear(
            spec.d_model,
            spec.d_model,
            bias=spec.bias,
            quant_config=quant_config,
            prefix=f"{prefix}.out_proj",
        )

    def _norm_all_heads(self, norm: LayerNorm, x: torch.Tensor, total_heads: int) -> torch.Tensor:
        """LayerNorm over every head of q (or k) when this rank holds only some of them."""
        if self.tp_size == 1:
            return norm(x)
        local_heads = x.shape[-1] // self.head_dim
        # Ranks hold heads in order; with fewer kv heads than ranks each is held `replicas` times.
        replicas = self.tp_size * local_heads // total_heads
        gathered = tensor_model_parallel_all_gather(x.contiguous(), dim=-1)
        if replicas > 1:
            gathered = gathered.view(-1, total_heads, replicas, self.head_dim)[:, :, 0]
            gathered = gathered.reshape(-1, total_heads * self.head_dim)
        start = (self.tp_rank // replicas) * x.shape[-1]
        return norm(gathered)[:, start : start + x.shape[-1]]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        qkv, _ = self.Wqkv(hidden_states)
        if self.clip_qkv is not None:
            qkv = qkv.clamp(min=-self.clip_qkv, max=self.clip_qkv)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        if self.qk_ln:
            q = self._norm_all_heads(self.q_ln, q, self.num_heads * self.tp_size)
            k = self._norm_all_heads(self.k_ln, k, self.total_kv_heads)
        attn_output = self.attn(q, k, v)
        output, _ = self.out_proj(attn_output)
        return output


class MptMLP(nn.Module):
    def __init__(self, spec: MptSpec, quant_config: QuantizationConfig | None, prefix: str):
        super().__init__()
        self.up_proj = ColumnParallelLinear(
            spec.d_model,
            spec.ffn_hidden_size,
            bias=spec.bias,
            quant_config=quant_config,
            prefix=f"{prefix}.up_proj",
        )
        if quant_config is not None and quant_config.get_name() in AUTO_AWQ_METHODS:
            self.act = ScaledGelu(
                spec.ffn_hidden_size,
                get_tensor_model_parallel_world_size(),
                get_tensor_model_parallel_rank(),
            )
        else:
            self.act = get_act_fn("gelu")  # exact (erf) GELU, as MPT's nn.GELU(approximate="none")
        self.down_proj = RowParallelLinear(
            spec.ffn_hidden_size,
            spec.d_model,
            bias=spec.bias,
            quant_config=quant_config,
            prefix=f"{prefix}.down_proj",
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self.up_proj(x)
        x, _ = self.down_proj(self.act(x))
        return x


class MptBlock(nn.Module):
    def __init__(
        self,
        spec: MptSpec,
        cache_config: CacheConfig | None,
        quant_config: QuantizationConfig | None,
        prefix: str,
    ):
        super().__init__()
        self.norm_1 = LayerNorm(spec.d_model, eps=spec.layer_norm_eps, bias=spec.bias)
        self.attn = MptAttention(spec, cache_config, quant_config, prefix=f"{prefix}.attn")
        self.norm_2 = LayerNorm(spec.d_model, eps=spec.layer_norm_eps, bias=spec.bias)
        self.ffn = MptMLP(spec, quant_config, prefix=f"{prefix}.ffn")

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.attn(self.norm_1(hidden_states))
        return hidden_states + self.ffn(self.norm_2(hidden_states))


@support_torch_compile(
    dynamic_arg_dims={
        "input_ids": 0,
        "positions": 0,
        "intermediate_tensors": 0,
        "inputs_embeds": 0,
    }
)
class MptModel(nn.Module):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        spec = MptSpec.from_config(vllm_config.model_config.hf_config)
        cache_config = vllm_config.cache_config
        quant_config = vllm_config.quant_config
        pp_group = get_pp_group()
        if pp_group.is_first_rank or (spec.tie_word_embeddings and pp_group.is_last_rank):
            self.wte = VocabParallelEmbedding(spec.vocab_size, spec.d_model)
        else:
            self.wte = PPMissingLayer()
        self.start_layer, self.end_layer, self.blocks = make_layers(
            spec.n_layers,
            lambda prefix: MptBlock(spec, cache_config, quant_config, prefix=prefix),
            prefix=f"{prefix}.blocks",
        )
        if pp_group.is_last_rank:
            self.norm_f = LayerNorm(spec.d_model, eps=spec.layer_norm_eps, bias=spec.bias)
        else:
            self.norm_f = PPMissingLayer()
        self.make_empty_intermediate_tensors = make_empty_intermediate_tensors_factory(
            ["hidden_states"], spec.d_model
        )

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.wte(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor | IntermediateTensors:
        del positions  # ALiBi: the attention kernel knows each token's position
        if get_pp_group().is_first_rank:
            hidden_states = inputs_embeds if inputs_embeds is not None else self.wte(input_ids)
        else:
            assert intermediate_tensors is not None
            hidden_states = intermediate_tensors["hidden_states"]
        for block in islice(self.blocks, self.start_layer, self.end_layer):
            hidden_states = block(hidden_states)
        if not get_pp_group().is_last_rank:
            return IntermediateTensors({"hidden_states": hidden_states})
        return self.norm_f(hidden_states)


class MptForCausalLM(nn.Module, SupportsPP):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        spec = MptSpec.from_config(vllm_config.model_config.hf_config)
        self.spec = spec
        # Read by the weight loader: a quantized checkpoint's extra tensors (GPTQ's g_idx) are
        # expected, not unknown.
        self.quant_config = vllm_config.quant_config
        self.transformer = MptModel(
            vllm_config=vllm_config, prefix=maybe_prefix(prefix, "transformer")
        )
        if get_pp_group().is_last_rank:
            self.lm_head = ParallelLMHead(
                spec.vocab_size,
                spec.d_model,
                quant_config=vllm_config.quant_config,
                prefix=maybe_prefix(prefix, "lm_head"),
            )
            if spec.tie_word_embeddings:
                self.lm_head = self.lm_head.tie_weights(self.transformer.wte)
            self.logits_processor = LogitsProcessor(spec.vocab_size, scale=spec.logit_scale)
        else:
            self.lm_head = PPMissingLayer()
        self.make_empty_intermediate_tensors = self.transformer.make_empty_intermediate_tensors

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.transformer.embed_input_ids(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor | IntermediateTensors:
        return self.transformer(input_ids, positions, intermediate_tensors, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        # A tied lm_head.weight, when a checkpoint stores it, is skipped by the loader.
        loaded = AutoWeightsLoader(self).load_weights(weights)
        refuse_missing_act_scales(self, loaded)  # AWQ: no uninitialised ffn.act.scales
        return loaded
