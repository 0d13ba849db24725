"""Tiny random MPT checkpoints, and transformers' MptForCausalLM as the reference they must match.

`make_tiny_mpt` builds an `MptForCausalLM` (transformers) with random weights, saves it as an
fp32 safetensors checkpoint with the GPT-NeoX tokenizer beside it, and returns the model so a
test can ask it for the reference greedy tokens and logprobs (`reference_greedy`).

Shapes default to MPT-30B's head size (112) on 2 layers, with MPT-30B's vocabulary (50432 rows,
of which the tokenizer uses the first 50277; the others are zero, as a trained model would never
pick them). Weights are drawn wider than transformers' initialisation and every LayerNorm weight
is perturbed, so greedy text varies and a norm that failed to load would show.

Options: `clip_qkv`, `qk_ln`, any head count, and `dialect="mosaicml"`, which rewrites config.json
the way MosaicML's remote-code checkpoints (MPT-30B) write it: "MPTForCausalLM", `auto_map`,
every key spelled out, and float dropouts that transformers' strict MptConfig refuses.

transformers' MPT does not implement `qk_ln`; for that option the reference gets MosaicML's
semantics grafted on: a LayerNorm over the whole q and over the whole k (all heads), applied
after the optional clamp, before the heads are split. The norms live at `attn.q_ln` / `attn.k_ln`
(no bias, as MPT's `no_bias`), so they are saved under MosaicML's weight names.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

NEOX_VOCAB_SIZE = 50277  # ids the GPT-NeoX tokenizer can produce; MPT pads the matrix to 50432
MOSAICML_AUTO_MAP = {
    "AutoConfig": "configuration_mpt.MPTConfig",
    "AutoModelForCausalLM": "modeling_mpt.MPTForCausalLM",
}


@dataclass(frozen=True)
class TinyMpt:
    d_model: int = 224
    n_heads: int = 2
    n_layers: int = 2
    vocab_size: int = 50432
    max_seq_len: int = 512
    clip_qkv: float | None = None
    qk_ln: bool = False
    dialect: Literal["transformers", "mosaicml"] = "transformers"
    init_std: float = 0.2
    seed: int = 0

    def transformers_config(self):
        """transformers' `MptConfig` of this shape (bias-free, as MPT-30B)."""
        from transformers import MptConfig

        return MptConfig(
            d_model=self.d_model,
            n_heads=self.n_heads,
            n_layers=self.n_layers,
            expansion_ratio=4,
            max_seq_len=self.max_seq_len,
            vocab_size=self.vocab_size,
            attn_config=self.attn_config(),
            no_bias=True,
            bos_token_id=0,
            eos_token_id=0,
        )

    def attn_config(self) -> dict:
        return {
            "alibi": True,
            "alibi_bias_max": 8,
            "attn_impl": "torch",
            "attn_pdrop": 0,
            "attn_type": "multihead_attention",
            "attn_uses_sequence_id": False,
            "clip_qkv": self.clip_qkv,
            "prefix_lm": False,
            "qk_ln": self.qk_ln,
            "softmax_scale": None,
        }


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and on a busy CPU OpenMP's spinning threads make
    transformers' generate 10x slower; restore the caller's setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@one_torch_thread()
def build_reference(spec: TinyMpt):
    """transformers' MptForCausalLM with `spec`'s shape and seeded random fp32 weights."""
    from transformers import MptForCausalLM

    config = spec.transformers_config()
    torch.manual_seed(spec.seed)
    model = MptForCausalLM(config).to(torch.float32)
    if spec.qk_ln:
        for block in model.transformer.blocks:
            _graft_qk_ln(block.attn, spec.d_model)
    generator = torch.Generator().manual_seed(spec.seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "norm" in name or name.endswith("_ln.weight"):
                param.copy_(1 + 0.25 * noise)
            else:
                param.copy_(spec.init_std * noise)
        model.transformer.wte.weight[NEOX_VOCAB_SIZE:] = 0
    return model.eval()


def _graft_qk_ln(attn: nn.Module, d_model: int) -> None:
    """MosaicML's qk_ln on transformers' MptAttention: clamp, then LayerNorm q and k whole."""
    attn.q_ln = nn.LayerNorm(d_model, eps=1e-5, bias=False)
    attn.k_ln = nn.LayerNorm(d_model, eps=1e-5, bias=False)
    clip, attn.clip_qkv = attn.clip_qkv, None  # the hook clamps, before the norms

    def norm_q_and_k(module: nn.Module, inputs: tuple, qkv: torch.Tensor) -> torch.Tensor:
        if clip:
            qkv = qkv.clamp(min=-clip, max=clip)
        q, k, v = qkv.chunk(3, dim=-1)
        return torch.cat([attn.q_ln(q), attn.k_ln(k), v], dim=-1)

    attn.Wqkv.register_forward_hook(norm_q_and_k)


def save_checkpoint(model, spec: TinyMpt, directory: Path, tokenizer_file: Path) -> Path:
    from transformers import PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_file),
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        model_max_length=spec.max_seq_len,
    )
    tokenizer.save_pretrained(directory)
    if spec.dialect == "mosaicml":
        (directory / "config.json").write_text(json.dumps(mosaicml_config(spec), indent=2))
    return directory


def mosaicml_config(spec: TinyMpt) -> dict:
    """config.json as MosaicML's remote code writes it (MPT-30B's keys), for `spec`."""
    return {
        "architectures": ["MPTForCausalLM"],
        "attn_config": {**spec.attn_config(), "attn_pdrop": 0.0},
        "auto_map": MOSAICML_AUTO_MAP,
        "d_model": spec.d_model,
        "emb_pdrop": 0.0,
        "embedding_fraction": 1.0,
        "expansion_ratio": 4,
        "init_config": {
            "emb_init_std": None,
            "emb_init_uniform_lim": None,
            "fan_mode": "fan_in",
            "init_div_is_residual": True,
            "init_gain": 0.0,
            "init_nonlinearity": "relu",
            "init_std": None,
            "name": "kaiming_normal_",
            "verbose": 0,
        },
        "init_device": "cpu",
        "learned_pos_emb": True,  # MPT-30B says so too; MosaicML turns it off when alibi is on
        "logit_scale": None,
        "max_seq_len": spec.max_seq_len,
        "model_type": "mpt",
        "n_heads": spec.n_heads,
        "n_layers": spec.n_layers,
        "no_bias": True,
        "norm_type": "low_precision_layernorm",
        "resid_pdrop": 0.0,
        "tokenizer_name": "EleutherAI/gpt-neox-20b",
        "torch_dtype": "float32",
        "transformers_version": "4.30.2",
        "use_cache": False,
        "verbose": 0,
        "vocab_size": spec.vocab_size,
    }


def make_tiny_mpt(directory: Path, tokenizer_file: Path, **options):
    """Write a tiny MPT checkpoint to `directory`; return (directory, reference model)."""
    spec = TinyMpt(**options)
    model = build_reference(spec)
    return save_checkpoint(model, spec, Path(directory), tokenizer_file), model


@one_torch_thread()
@torch.no_grad()
def reference_greedy(model, prompt_ids: list[int], max_tokens: int) -> tuple[list[int], list[float]]:
    """transformers' greedy continuation (EOS ignored) and each chosen token's logprob."""
    output = model.generate(
        torch.tensor([prompt_ids]),
        attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
        do_sample=False,
        max_new_tokens=max_tokens,
        min_new_tokens=max_tokens,
        eos_token_id=None,
        pad_token_id=0,
        output_logits=True,
        return_dict_in_generate=True,
    )
    tokens = output.sequences[0, len(prompt_ids) :].tolist()
    logprobs = [
        torch.log_softmax(step_logits[0].float(), dim=-1)[token].item()
        for step_logits, token in zip(output.logits, tokens)
    ]
    return tokens, logprobs


def vllm_parameter_count_on_meta(model_dir: Path) -> int:
    """Build our vLLM MptForCausalLM for `model_dir`'s config.json on the meta device (no
    weights, no engine: a one-rank gloo group only) and count its parameters. Run it in a
    child process: it initialises vLLM's distributed state for the rest of the process."""
    import socket

    from vllm.config import set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.engine.arg_utils import EngineArgs

    from server.models.mpt import MptForCausalLM

    engine_args = EngineArgs(model=str(model_dir), skip_tokenizer_init=True, enforce_eager=True)
    vllm_config = engine_args.create_engine_config()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with set_current_vllm_config(vllm_config):
        init_distributed_environment(
            world_size=1,
            rank=0,
            local_rank=0,
            distributed_init_method=f"tcp://127.0.0.1:{port}",
            backend="gloo",
        )
        initialize_model_parallel(1, 1)
        with torch.device("meta"):
            model = MptForCausalLM(vllm_config=vllm_config)
    return sum(param.numel() for param in model.parameters())
