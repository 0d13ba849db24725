"""The MPT plugin's last line of defence: refuse, at model load, an attention layer that would
not compute ALiBi right, whoever built the engine (this server, `vllm serve` with our plugin, a
script). Which backends are safe, and why, is `server.mpt.attention`'s docstring."""

from __future__ import annotations

from typing import Any

from server.mpt.attention import CPU, FLASH, IGNORES_ALIBI, TRITON, AttentionRefused


def refuse_alibi_unsafe_layer(layer: Any) -> None:
    """Raise when vLLM's `Attention` layer would not compute ALiBi right (called at model load).

    The last line of defence: it holds whoever builds the engine (this server, `vllm serve` with
    our plugin, a script), so no path gives silently wrong text.
    """
    name = layer.attn_backend.get_name()
    if name in (TRITON, CPU):
        return
    if name == FLASH:
        problem = _flash_disagreement(layer)
        if problem is None:
            return
    else:
        problem = f"the {name} backend " + IGNORES_ALIBI.get(name, "is not known to apply ALiBi")
    raise AttentionRefused(
        f"MPT uses ALiBi positions, but {problem}. Start the server with --attention-backend "
        f"auto (or {TRITON}; or {FLASH}, which it pins to FlashAttention 2); with vLLM directly, "
        f"pass --attention-backend {TRITON}"
    )


def _flash_disagreement(layer: Any) -> str | None:
    from vllm.v1.attention.backend import AttentionCGSupport
    from vllm.v1.attention.backends.fa_utils import get_flash_attn_version

    layer_version = layer.impl.vllm_flash_attn_version
    planner_version = get_flash_attn_version()  # what FlashAttentionMetadataBuilder asks
    if layer_version != 2:
        return f"the FlashAttention layer runs FA{layer_version}, which has no ALiBi"
    if planner_version != 2:
        return (
            f"FlashAttention's metadata builder plans for FA{planner_version} while the ALiBi layer "
            "runs FA2, whose argument guards then fail (pin attention_config.flash_attn_version=2)"
        )
    if layer.attn_backend.get_builder_cls()._cudagraph_support == AttentionCGSupport.ALWAYS:
        return "FlashAttention's builder claims FA3's full-CUDA-graph support for the FA2 layer"
    return None
