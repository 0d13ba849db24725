"""MPT's config dialects, unsupported options, ALiBi slopes and MPT-30B's size, without an engine.

The engine-backed proof that vLLM computes what transformers computes is tests/models/test_served_mpt.py.
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from server.mpt.config import MptCheckpointConfig, MptSpec, alibi_slopes
from harness.server import REPO_ROOT
from harness.tiny_mpt import TinyMpt, mosaicml_config

# MPT-30B's config.json (mosaicml/mpt-30b), the base of airoboros-mpt-30b.
MPT_30B = TinyMpt(d_model=7168, n_heads=64, n_layers=48, vocab_size=50432, max_seq_len=8192)
MPT_30B_PARAMETERS = 29_957_200_896


def write_config(directory: Path, config: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def transformers_config_dir(directory: Path, spec: TinyMpt) -> Path:
    from transformers import MptConfig

    MptConfig(
        d_model=spec.d_model,
        n_heads=spec.n_heads,
        n_layers=spec.n_layers,
        max_seq_len=spec.max_seq_len,
        vocab_size=spec.vocab_size,
        attn_config=spec.attn_config(),
        architectures=["MptForCausalLM"],  # as MptForCausalLM.save_pretrained writes it
    ).save_pretrained(directory)
    return directory


def with_changes(config: dict, **changes) -> dict:
    """A copy of `config` with `attn_config.x` / `ffn_config.x` / top-level keys changed."""
    changed = copy.deepcopy(config)
    for key, value in changes.items():
        section, _, field = key.rpartition("__")
        (changed.setdefault(section, {}) if section else changed)[field] = value
    return changed


# --- both dialects ------------------------------------------------------------------------------


def test_both_dialects_parse_to_the_same_spec(tmp_path):
    spec = TinyMpt(clip_qkv=2.0, qk_ln=True)
    native = MptCheckpointConfig.from_pretrained(transformers_config_dir(tmp_path / "native", spec))
    mosaicml = MptCheckpointConfig.from_pretrained(
        write_config(tmp_path / "mosaicml", mosaicml_config(spec))
    )
    assert native.architectures == ["MptForCausalLM"]
    assert mosaicml.architectures == ["MPTForCausalLM"]
    assert isinstance(native.attn_config, dict) and isinstance(mosaicml.attn_config, dict)
    assert MptSpec.from_config(native) == MptSpec.from_config(mosaicml) == MptSpec(
        d_model=224,
        n_heads=2,
        kv_n_heads=2,
        n_layers=2,
        ffn_hidden_size=896,
        vocab_size=50432,
        max_seq_len=512,
        layer_norm_eps=1e-5,
        bias=False,
        clip_qkv=2.0,
        qk_ln=True,
        softmax_scale=1 / math.sqrt(112),  # MPT: 1/sqrt(d_model / n_heads)
        alibi_bias_max=8.0,
        logit_scale=1.0,
        tie_word_embeddings=True,
    )


def test_transformers_mpt_config_object_normalises_like_config_json(tmp_path):
    from transformers import MptConfig

    directory = transformers_config_dir(tmp_path, TinyMpt(clip_qkv=2.0))
    assert MptSpec.from_config(MptConfig.from_pretrained(directory)) == MptSpec.from_config(
        json.loads((directory / "config.json").read_text())
    )


def test_mosaicml_values_that_transformers_strict_config_refuses_are_read(tmp_path):
    config = with_changes(
        mosaicml_config(MPT_30B),
        attn_config__attn_pdrop=0.0,
        attn_config__clip_qkv=6,
        attn_config__alibi_bias_max=16.0,
        attn_config__attn_type="grouped_query_attention",
        attn_config__kv_n_heads=8,
        expansion_ratio=2.5,
    )
    parsed = MptCheckpointConfig.from_pretrained(write_config(tmp_path, config))
    spec = MptSpec.from_config(parsed)
    assert (spec.clip_qkv, spec.alibi_bias_max, spec.kv_n_heads) == (6.0, 16.0, 8)
    assert spec.ffn_hidden_size == int(2.5 * 7168)
    assert parsed.num_key_value_heads == 8  # what vLLM sizes the KV cache from


def test_auto_map_is_kept_but_never_executed(tmp_path):
    # The checkpoint has no configuration_mpt.py: parsing must not look for it.
    parsed = MptCheckpointConfig.from_pretrained(write_config(tmp_path, mosaicml_config(TinyMpt())))
    assert parsed.auto_map["AutoConfig"] == "configuration_mpt.MPTConfig"
    assert parsed.max_seq_len == 512


@pytest.mark.parametrize(
    ("attn_type", "kv_heads"),
    [("multihead_attention", 64), ("multiquery_attention", 1)],
)
def test_attention_type_sets_kv_heads(attn_type, kv_heads):
    spec = MptSpec.from_config(with_changes(mosaicml_config(MPT_30B), attn_config__attn_type=attn_type))
    assert spec.kv_n_heads == kv_heads


def test_logit_scale_inv_sqrt_d_model_is_resolved():
    spec = MptSpec.from_config(with_changes(mosaicml_config(MPT_30B), logit_scale="inv_sqrt_d_model"))
    assert spec.logit_scale == pytest.approx(7168**-0.5)


@pytest.fixture(scope="module")
def in_a_vllm_process(tmp_path_factory) -> dict:
    """What a fresh process with vLLM reports: after `register` (twice), the config class
    AutoConfig picks for a tiny MPT and the MPT architectures vLLM's registry lists; our vLLM
    MPT-30B module built on the meta device, counted; and what vLLM's engine configuration makes
    of a checkpoint with an option we refuse. One child process (vLLM's import is most of
    its cost) for both tests: registration replaces AutoConfig's "mpt" class, and the meta build
    sets up vLLM's distributed state, for the rest of that process."""
    tiny = write_config(tmp_path_factory.mktemp("tiny"), mosaicml_config(TinyMpt()))
    big = write_config(tmp_path_factory.mktemp("mpt30b"), {**mosaicml_config(MPT_30B), "torch_dtype": "bfloat16"})
    prefix_lm = write_config(
        tmp_path_factory.mktemp("prefix-lm"), with_changes(mosaicml_config(TinyMpt()), attn_config__prefix_lm=True)
    )
    script = textwrap.dedent(
        f"""
        import json, server.models as models
        models.register(); models.register()  # idempotent
        from transformers import AutoConfig
        from vllm import ModelRegistry
        from harness.tiny_mpt import vllm_parameter_count_on_meta
        config = AutoConfig.from_pretrained({str(tiny)!r}, trust_remote_code=False)
        report = {{
            "config": type(config).__name__,
            "archs": [a for a in ModelRegistry.get_supported_archs() if a.lower() == "mptforcausallm"],
        }}
        report["mpt30b_parameters"] = vllm_parameter_count_on_meta({str(big)!r})
        from vllm.engine.arg_utils import EngineArgs
        try:  # what an engine start does first with a checkpoint: its configuration
            EngineArgs(model={str(prefix_lm)!r}, skip_tokenizer_init=True, enforce_eager=True).create_engine_config()
            report["prefix_lm_refusal"] = None
        except Exception as error:
            report["prefix_lm_refusal"] = f"{{type(error).__name__}}: {{error}}"
        print(json.dumps(report))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_register_makes_vllm_and_autoconfig_use_our_mpt(in_a_vllm_process):
    assert in_a_vllm_process["config"] == "MptCheckpointConfig"
    assert in_a_vllm_process["archs"] == ["MPTForCausalLM", "MptForCausalLM"]


def test_an_unsupported_option_stops_vllms_engine_configuration_naming_it(in_a_vllm_process):
    # The first thing an engine start does; the server's side of a failed start (it dies with the
    # error in its log) is tests/ops/test_failed_start.py's.
    refusal = in_a_vllm_process["prefix_lm_refusal"]
    assert refusal is not None and "MPT config attn_config.prefix_lm=True is not supported" in refusal, refusal


# --- unsupported options --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"attn_config__prefix_lm": True}, "attn_config.prefix_lm=True"),
        ({"attn_config__alibi": False}, "attn_config.alibi=False"),
        ({"attn_config__rope": True}, "attn_config.rope=True"),
        ({"attn_config__sliding_window_size": 1024}, "attn_config.sliding_window_size=1024"),
        ({"attn_config__attn_type": "cross_attention"}, "attn_config.attn_type='cross_attention'"),
        (
            {"attn_config__attn_type": "grouped_query_attention", "attn_config__kv_n_heads": 5},
            "attn_config.kv_n_heads=5",
        ),
        ({"norm_type": "rmsnorm"}, "norm_type='rmsnorm'"),
        ({"ffn_config__ffn_type": "mptglu"}, "ffn_config.ffn_type='mptglu'"),
        ({"logit_scale": "sqrt"}, "logit_scale='sqrt'"),
    ],
)
def test_unsupported_option_is_refused_naming_field_and_value(change, named):
    config = with_changes(mosaicml_config(MPT_30B), **change)
    with pytest.raises(ValueError, match="MPT config .* is not supported") as raised:
        MptSpec.from_config(config)
    assert named in str(raised.value)
    with pytest.raises(ValueError, match=f"{named.split('=')[0]}"):
        MptCheckpointConfig.from_dict(config)  # what vLLM's config parsing meets


def test_training_only_options_are_accepted():
    # embedding_fraction scales gradients only (x*f + x.detach()*(1-f) == x), and
    # attn_uses_sequence_id needs a sequence_id that generation never passes.
    config = with_changes(
        mosaicml_config(MPT_30B), embedding_fraction=0.1, attn_config__attn_uses_sequence_id=True
    )
    assert MptSpec.from_config(config) == MptSpec.from_config(mosaicml_config(MPT_30B))


# --- ALiBi slopes ----------------------------------------------------------------------------


def test_alibi_slopes_match_transformers_for_1_to_80_heads():
    from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor

    for n_heads in range(1, 81):
        # transformers' bias for key j at the last query is (j - last) * slope: read it at j = last - 1.
        expected = (-build_mpt_alibi_tensor(n_heads, 4)[:, 0, -2]).tolist()
        assert alibi_slopes(n_heads) == expected, n_heads


def test_alibi_slopes_interleave_for_a_non_power_of_two_head_count():
    # 3 heads: MPT computes 4 slopes (1/4, 1/16, 1/64, 1/256), keeps the odd ones, then the even.
    assert alibi_slopes(3) == [1 / 16, 1 / 256, 1 / 4]
    assert alibi_slopes(6) == [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3]


def test_alibi_bias_max_sets_the_slope_range():
    assert alibi_slopes(4, alibi_bias_max=16) == [2**-4, 2**-8, 2**-12, 2**-16]


def test_tensor_parallel_slices_cover_the_slopes_in_head_order():
    slopes = alibi_slopes(6)
    per_rank = [slopes[rank * 3 : rank * 3 + 3] for rank in range(2)]  # what each TP rank takes
    assert per_rank[0] + per_rank[1] == slopes
    assert per_rank[1] == [2**-8, 2**-1, 2**-3]


# --- MPT-30B's size --------------------------------------------------------------------------


def test_mpt30b_parameter_count_matches_transformers_on_meta():
    from transformers import MptForCausalLM

    config = MPT_30B.transformers_config()
    with torch.device("meta"):
        reference = MptForCausalLM(config)
    counted = sum(param.numel() for param in reference.parameters())
    spec = MptSpec.from_config(mosaicml_config(MPT_30B))
    assert counted == spec.parameter_count() == MPT_30B_PARAMETERS  # about 29.96 B
    assert (spec.head_dim, spec.ffn_hidden_size, spec.max_seq_len) == (112, 28672, 8192)


def test_mpt30b_vllm_module_builds_on_meta_with_the_same_count(in_a_vllm_process):
    assert in_a_vllm_process["mpt30b_parameters"] == MPT_30B_PARAMETERS
