"""MPT's two config.json dialects → one small, validated `MptSpec`.

Two dialects exist and both carry `model_type: "mpt"`:

- transformers' native `MptConfig` (`architectures: ["MptForCausalLM"]`), and
- MosaicML's remote-code config (`architectures: ["MPTForCausalLM"]`, `attn_config` a plain dict,
  `auto_map` pointing at code in the checkpoint), which is what MPT-30B and its fine-tunes ship.

vLLM parses config.json with `AutoConfig.from_pretrained(trust_remote_code=False)`. Because
transformers has a native class for "mpt", `auto_map` is ignored and `MptConfig` is used, whose
strict field types reject values MosaicML writes routinely (`attn_pdrop: 0.0`, an integer
`clip_qkv`, `attn_type: "grouped_query_attention"`, a float `expansion_ratio`). So the plugin
registers `MptCheckpointConfig` for "mpt" instead: it keeps every key as written, makes
`attn_config` a plain dict whichever dialect it came from, and validates the architecture at
parse time, so an unsupported checkpoint fails in the front-end with a message naming the field
before any engine process starts. Keys a config leaves out take transformers' `MptConfig`
defaults (MosaicML's exported configs spell every key out).

Semantics follow MosaicML's implementation (the one MPT was trained with) where transformers'
port is narrower: transformers ignores `qk_ln`, `no_bias: false`, `expansion_ratio`,
`alibi_bias_max`, `logit_scale` and grouped-query attention; this module does not.

Nothing here imports torch or vLLM at module level: the plugin imports it in every vLLM process.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedConfig

# transformers' MptAttentionConfig defaults; MosaicML's configs always write every key.
_ATTN_DEFAULTS: dict[str, Any] = {
    "attn_type": "multihead_attention",
    "clip_qkv": None,
    "softmax_scale": None,
    "prefix_lm": False,
    "qk_ln": False,
    "attn_uses_sequence_id": False,
    "alibi": True,
    "alibi_bias_max": 8,
}
_KV_HEADS_BY_ATTN_TYPE = {"multihead_attention": None, "multiquery_attention": 1}
# LPLayerNorm only changes the compute dtype under autocast: at inference it is a LayerNorm.
_SUPPORTED_NORM_TYPES = ("low_precision_layernorm", "layernorm")
_GELU = {"name": "gelu", "approximate": "none"}


def _unsupported(field: str, value: Any, why: str) -> ValueError:
    return ValueError(f"MPT config {field}={value!r} is not supported: {why}")


@dataclass(frozen=True)
class MptSpec:
    """The architecture of one MPT checkpoint, in the terms the vLLM model needs."""

    d_model: int
    n_heads: int
    kv_n_heads: int
    n_layers: int
    ffn_hidden_size: int
    vocab_size: int
    max_seq_len: int
    layer_norm_eps: float
    bias: bool
    clip_qkv: float | None
    qk_ln: bool
    softmax_scale: float
    alibi_bias_max: float
    logit_scale: float
    tie_word_embeddings: bool

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def from_config(cls, config: PreTrainedConfig | Mapping[str, Any]) -> MptSpec:
        """Normalise either dialect (a config object or config.json's dict); raise on what
        this implementation cannot run, naming the field and its value."""
        raw = dict(config) if isinstance(config, Mapping) else config.to_dict()
        attn_raw = raw.get("attn_config") or {}
        if not isinstance(attn_raw, Mapping):  # transformers' MptAttentionConfig
            attn_raw = attn_raw.to_dict()
        attn = {**_ATTN_DEFAULTS, **attn_raw}
        ffn = raw.get("ffn_config") or {}
        _refuse_unsupported(raw, attn, ffn)

        d_model, n_heads = int(raw.get("d_model", 2048)), int(raw.get("n_heads", 16))
        if d_model % n_heads:
            raise _unsupported("d_model", d_model, f"it must be a multiple of n_heads={n_heads}")
        softmax_scale = attn["softmax_scale"]
        return cls(
            d_model=d_model,
            n_heads=n_heads,
            kv_n_heads=_kv_heads(attn, n_heads),
            n_layers=int(raw.get("n_layers", 24)),
            ffn_hidden_size=_ffn_hidden_size(raw, ffn, d_model),
            vocab_size=int(raw.get("vocab_size", 50368)),
            max_seq_len=int(raw.get("max_seq_len", 2048)),
            layer_norm_eps=float(raw.get("layer_norm_epsilon", 1e-5)),
            bias=not raw.get("no_bias", True),
            clip_qkv=float(attn["clip_qkv"]) if attn["clip_qkv"] else None,  # MPT: 0 means off
            qk_ln=bool(attn["qk_ln"]),
            softmax_scale=(
                float(softmax_scale) if softmax_scale is not None else 1 / math.sqrt(d_model / n_heads)
            ),
            alibi_bias_max=float(attn["alibi_bias_max"]),
            logit_scale=_logit_scale(raw, d_model),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", True)),
        )

    def parameter_count(self) -> int:
        """Weights in the model (a tied lm_head counted once), as the checkpoint stores them."""
        d, kv_dim = self.d_model, self.kv_n_heads * self.head_dim
        bias = int(self.bias)
        norm = d * (1 + bias)
        qkv = d * (d + 2 * kv_dim) + bias * (d + 2 * kv_dim)
        out_proj = d * d + bias * d
        qk_ln = (d + kv_dim) * (1 + bias) if self.qk_ln else 0
        ffn = 2 * d * self.ffn_hidden_size + bias * (self.ffn_hidden_size + d)
        block = 2 * norm + qkv + out_proj + qk_ln + ffn
        embeddings = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return embeddings + self.n_layers * block + norm


def _refuse_unsupported(raw: Mapping[str, Any], attn: Mapping[str, Any], ffn: Mapping[str, Any]) -> None:
    # embedding_fraction (x*f + x.detach()*(1-f)) and attn_uses_sequence_id (ignored without a
    # sequence_id, which generation never passes) only change training: accepted.
    if not attn["alibi"]:
        raise _unsupported(
            "attn_config.alibi", attn["alibi"],
            "only ALiBi positions are implemented (no learned or rotary positions)",
        )
    if attn.get("rope"):
        raise _unsupported("attn_config.rope", attn["rope"], "rotary positions are not implemented")
    if attn["prefix_lm"]:
        raise _unsupported(
            "attn_config.prefix_lm", attn["prefix_lm"],
            "prefix-LM (bidirectional prefix) attention needs a per-request prefix mask, "
            "which vLLM's paged attention cannot express",
        )
    if attn.get("sliding_window_size") not in (None, -1):
        raise _unsupported(
            "attn_config.sliding_window_size", attn["sliding_window_size"],
            "sliding-window attention is not implemented",
        )
    if attn.get("attn_logit_softcapping") is not None:
        raise _unsupported(
            "attn_config.attn_logit_softcapping", attn["attn_logit_softcapping"],
            "attention logit soft-capping is not implemented",
        )
    if attn.get("qk_gn"):
        raise _unsupported("attn_config.qk_gn", attn["qk_gn"], "per-head q/k GroupNorm is not implemented")
    if str(raw.get("norm_type", "low_precision_layernorm")).lower() not in _SUPPORTED_NORM_TYPES:
        raise _unsupported(
            "norm_type", raw.get("norm_type"), f"only {' and '.join(_SUPPORTED_NORM_TYPES)} are implemented"
        )
    if raw.get("block_overrides"):
        raise _unsupported("block_overrides", raw["block_overrides"], "all blocks must be alike")
    if ffn.get("ffn_type", "mptmlp") != "mptmlp":
        raise _unsupported("ffn_config.ffn_type", ffn["ffn_type"], "only the GELU MLP (mptmlp) is implemented")
    if "ffn_act_fn" in ffn and ffn["ffn_act_fn"] != _GELU:
        raise _unsupported("ffn_config.ffn_act_fn", ffn["ffn_act_fn"], f"only {_GELU} is implemented")


def _kv_heads(attn: Mapping[str, Any], n_heads: int) -> int:
    attn_type = attn["attn_type"]
    if attn_type == "grouped_query_attention":
        kv_n_heads = int(attn.get("kv_n_heads", n_heads))
    elif attn_type in _KV_HEADS_BY_ATTN_TYPE:
        kv_n_heads = _KV_HEADS_BY_ATTN_TYPE[attn_type] or n_heads
    else:
        raise _unsupported(
            "attn_config.attn_type", attn_type,
            "expected multihead_attention, multiquery_attention or grouped_query_attention",
        )
    if kv_n_heads < 1 or n_heads % kv_n_heads:
        raise _unsupported("attn_config.kv_n_heads", kv_n_heads, f"it must divide n_heads={n_heads}")
    return kv_n_heads


def _ffn_hidden_size(raw: Mapping[str, Any], ffn: Mapping[str, Any], d_model: int) -> int:
    if ffn.get("ffn_hidden_size") is not None:
        return int(ffn["ffn_hidden_size"])
    expansion_ratio = raw.get("expansion_ratio", 4)
    size = expansion_ratio * d_model
    if size != int(size):
        raise _unsupported("expansion_ratio", expansion_ratio, f"expansion_ratio * d_model={size} is not whole")
    return int(size)


def _logit_scale(raw: Mapping[str, Any], d_model: int) -> float:
    logit_scale = raw.get("logit_scale")
    if logit_scale is None:
        return 1.0
    if logit_scale == "inv_sqrt_d_model":
        return 1 / math.sqrt(d_model)
    if isinstance(logit_scale, str):
        raise _unsupported("logit_scale", logit_scale, "expected a number, null or 'inv_sqrt_d_model'")
    return float(logit_scale)


def alibi_slopes(n_heads: int, alibi_bias_max: float = 8.0) -> list[float]:
    """One ALiBi slope per head, exactly as MosaicML's `gen_slopes` computes them (float32).

    Slopes are 2^(-m) for m = alibi_bias_max * i / P, i = 1..P, with P the next power of two
    of n_heads. For other head counts MPT keeps the odd entries then the even ones, cut to
    n_heads (not BLOOM's scheme, whose extra slopes come from a second base).
    """
    import torch

    padded = 2 ** math.ceil(math.log2(n_heads))
    # On the CPU explicitly: vLLM builds models under a default device (cuda, or meta).
    m = torch.arange(1, padded + 1, dtype=torch.float32, device="cpu").mul(alibi_bias_max / padded)
    slopes = 1.0 / torch.pow(2, m)
    if padded != n_heads:
        slopes = torch.cat([slopes[1::2], slopes[::2]])[:n_heads]
    return slopes.tolist()


class MptCheckpointConfig(PreTrainedConfig):
    """config.json of either MPT dialect, as vLLM's `hf_config` (registered for "mpt").

    Every key is kept as written; `attn_config` is always a plain dict. Field defaults are
    transformers' `MptConfig` defaults.
    """

    model_type = "mpt"
    attribute_map = {
        "num_attention_heads": "n_heads",
        "hidden_size": "d_model",
        "num_hidden_layers": "n_layers",
    }

    d_model: int = 2048
    n_heads: int = 16
    n_layers: int = 24
    expansion_ratio: int | float = 4
    max_seq_len: int = 2048
    vocab_size: int = 50368
    layer_norm_epsilon: float = 1e-5
    attn_config: Any = None
    no_bias: bool = True
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        if self.attn_config is None:
            self.attn_config = {}
        elif not isinstance(self.attn_config, dict):
            self.attn_config = self.attn_config.to_dict()
        super().__post_init__(**kwargs)
        MptSpec.from_config(self)  # fail at parse time, naming the field

    @property
    def num_key_value_heads(self) -> int:
        """What vLLM reads to size the KV cache when it asks the config."""
        return MptSpec.from_config(self).kv_n_heads
