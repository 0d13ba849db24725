"""`--base-nf4`: the base weights as QLoRA training saw them, through bitsandbytes' NF4.

QLoRA trains the adapter against a 4-bit copy of the base: transformers' 4-bit loading
(`BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
bnb_4bit_use_double_quant=True)`) quantizes every linear layer's weight with bitsandbytes'
block-wise NF4 (blocks of 64 values, each scaled by its absolute maximum) and double
quantization (those block maxima themselves quantized to 8 bits in blocks of 256, around their
mean), and each forward pass dequantizes it again. The embedding and the norms stay 16-bit, and
MPT's tied output layer is the embedding. Merging into the dequantized NF4 weights instead of the
originals gives the model the adapter was trained with, rather than the original base plus the
adapter.

This calls bitsandbytes' own `quantize_4bit` / `dequantize_4bit` (they run on the CPU), from the
weight in its stored dtype back to that dtype, which is exactly what transformers' 4-bit path
holds for a checkpoint of that dtype. bitsandbytes is an optional dependency (the `nf4` extra):
about 125 MB that serving never needs.
"""

from __future__ import annotations

import logging
import re
from types import ModuleType

import torch

from server.merge.errors import MergeError

BLOCK_SIZE = 64
# The layers QLoRA holds in 4 bits: every nn.Linear of the blocks (bitsandbytes' Linear4bit).
QUANTIZED_IN_TRAINING = re.compile(
    r"transformer\.blocks\.\d+\.(attn\.(Wqkv|out_proj)|ffn\.(up_proj|down_proj))\.weight"
)


def load_bitsandbytes() -> ModuleType:
    """bitsandbytes' functional module, or a MergeError saying how to install it."""
    # On import, bitsandbytes warns that an optional CPU matmul kernel is missing: NF4
    # quantization does not use it.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        import bitsandbytes.functional as functional
    except ImportError:
        raise MergeError("--base-nf4 needs bitsandbytes: pip install 'airoboros-server[nf4]'") from None
    return functional


def is_quantized_in_training(name: str) -> bool:
    return QUANTIZED_IN_TRAINING.fullmatch(name) is not None


def nf4_round_trip(weight: torch.Tensor) -> torch.Tensor:
    """`weight` quantized to NF4 (block size 64, double quantization) and dequantized, same dtype."""
    functional = load_bitsandbytes()
    packed, state = functional.quantize_4bit(
        weight.contiguous(), blocksize=BLOCK_SIZE, compress_statistics=True, quant_type="nf4"
    )
    return functional.dequantize_4bit(packed, state)
