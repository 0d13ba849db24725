"""The attention path on NVIDIA GPUs: our choice per compute capability, and vLLM's CUDA code run on it.

The replayed part (tests/support/cuda_replay.py) runs vLLM 0.32's own CUDA decision code with
the platform mocked as CUDA at 8.0, 8.6, 8.9, 9.0 and 10.0 and the C extensions stubbed: engine
config, our MPT plugin building its layers, the selector, the FA version logic, the metadata
builder and FlashAttention's argument guards, for tiny MPTs with head size 112 (MPT-30B's) and
128, each batch kind: prefill, decode, full-CUDA-graph decode. One child process replays every
case (about a minute). The rest are pure tests of the choice and of the setting's checks.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from server.mpt.attention import (
    AttentionChoice,
    AttentionRefused,
    ModelAttention,
    Target,
    choose_attention,
    normalise_backend_setting,
)
from server.models.attention_guard import refuse_alibi_unsafe_layer
from harness.server import REPO_ROOT
from harness.tiny_mpt import TinyMpt, mosaicml_config

CAPABILITIES = [(8, 0), (8, 6), (8, 9), (9, 0), (10, 0)]
MODELS = {112: TinyMpt(), 128: TinyMpt(d_model=256)}  # two heads each
EXPECTED = {(8, 0): ("FLASH_ATTN", 2), (8, 6): ("FLASH_ATTN", 2), (8, 9): ("FLASH_ATTN", 2),
            (9, 0): ("TRITON_ATTN", None), (10, 0): ("TRITON_ATTN", None)}


def case_key(case: dict) -> str:
    capability = "".join(str(part) for part in case["capability"])
    return f"sm{capability}-head{case['head']}-{case['arguments']}-{case.get('attention_backend', 'auto')}" + (
        "" if case.get("load_check", True) else "-unchecked"
    )


@pytest.fixture(scope="module")
def replays(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("replay")
    models = {}
    for head, spec in MODELS.items():
        directory = root / f"tiny-mpt-head{head}"
        directory.mkdir()
        (directory / "config.json").write_text(json.dumps(mosaicml_config(spec)))  # no weights needed
        models[head] = str(directory)
    cases = [
        {"capability": list(cap), "head": head, "model": models[head], "arguments": "server"}
        for cap in CAPABILITIES for head in MODELS
    ]
    cases += [
        # vLLM left to itself on sm90, with our load-time check off: the canary.
        {"capability": [9, 0], "head": 112, "model": models[112], "arguments": "vllm-default", "load_check": False},
        # ... and with it on, as the plugin always runs.
        {"capability": [9, 0], "head": 112, "model": models[112], "arguments": "vllm-default"},
        {"capability": [10, 0], "head": 128, "model": models[128], "arguments": "vllm-default"},
        # A user's explicit FLASH_ATTN on Hopper: pinned to FA2 for planner and layer.
        {"capability": [9, 0], "head": 112, "model": models[112], "arguments": "server", "attention_backend": "FLASH_ATTN"},
    ]
    cases_file = root / "cases.json"
    cases_file.write_text(json.dumps(cases))
    run = subprocess.run(
        [sys.executable, "-m", "tests.support.cuda_replay", str(cases_file)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("REPLAY-RESULTS ")]
    assert run.returncode == 0 and lines, f"replay failed ({run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    results = json.loads(lines[-1].removeprefix("REPLAY-RESULTS "))
    return {case_key(case): result for case, result in zip(cases, results, strict=True)}


def replayed(replays: dict, key: str) -> dict:
    result = replays[key]
    assert "crash" not in result, result["crash"]
    return result


@pytest.mark.parametrize("head", list(MODELS))
@pytest.mark.parametrize("capability", CAPABILITIES, ids=lambda c: f"sm{c[0]}{c[1]}")
def test_server_choice_applies_alibi_with_planner_and_layer_agreeing(replays, capability, head):
    result = replayed(replays, f"sm{capability[0]}{capability[1]}-head{head}-server-auto")
    assert "load_refused" not in result, result["load_refused"]
    assert (result["backend"], result["layer_fa_version"]) == EXPECTED[capability]
    assert result["head_size"] == head and result["invalid_reasons"] == []
    if result["backend"] == "FLASH_ATTN":
        assert result["planner_fa_version"] == result["layer_fa_version"] == 2
        assert result["aot_schedule"] is False  # no FA3 scheduler metadata planned
        assert result["cudagraph_support"] != "ALWAYS"  # FA2 cannot replay mixed batches in one graph
    assert set(result["batches"]) == {"prefill", "decode", "full_cudagraph_decode"}
    for name, batch in result["batches"].items():
        assert batch["error"] is None, (name, batch["error"])
        assert not batch["scheduler_metadata"] and (batch["max_num_splits"] or 0) <= 1, (name, batch)
        # The kernel receives this rank's MPT slopes: ALiBi is applied, not dropped.
        assert batch["kernel_calls"] and all(call["alibi"] == result["alibi"] for call in batch["kernel_calls"])
        assert result["alibi"] == [0.0625, 0.00390625]  # MPT's slopes for 2 heads, alibi_bias_max 8


def test_canary_vllm_default_on_sm90_trips_flash_attention_2_guard(replays):
    """vLLM 0.32 alone on H100/H200 plans FA3 but runs the ALiBi layer on FA2. When this test
    fails, a vLLM upgrade fixed it: revisit the sm90 choice in server/mpt/attention.py."""
    result = replayed(replays, "sm90-head112-vllm-default-auto-unchecked")
    assert result["engine_arguments"] == {}
    assert result["backend"] == "FLASH_ATTN"
    assert (result["layer_fa_version"], result["planner_fa_version"]) == (2, 3)
    assert result["cudagraph_support"] == "ALWAYS"  # FA3's claim, made for an FA2 layer
    for name, batch in result["batches"].items():
        assert batch["scheduler_metadata"], name
        assert batch["error"] == "FA2 does not support scheduler_metadata, q_descale, k_descale, v_descale", name
        assert batch["kernel_calls"] == []
    # Without the first guard the second would trip: FA2 does not support num_splits > 1.
    assert result["batches"]["full_cudagraph_decode"]["max_num_splits"] > 1


def test_plugin_refuses_vllm_default_on_sm90_at_load(replays):
    result = replayed(replays, "sm90-head112-vllm-default-auto")
    assert "plans for FA3 while the ALiBi layer runs FA2" in result["load_refused"]
    assert "--attention-backend TRITON_ATTN" in result["load_refused"]


def test_plugin_refuses_vllm_default_on_sm100_at_load(replays):
    # FlashInfer, first on sm100, is not installed here (vLLM's CUDA wheel brings it), so vLLM
    # falls to FLASH_ATTN, whose builder plans FA4 (no ALiBi) for an FA2 layer: refused too.
    result = replayed(replays, "sm100-head128-vllm-default-auto")
    assert "plans for FA4 while the ALiBi layer runs FA2" in result["load_refused"]


def test_plugin_refuses_flashinfer_by_name():
    layer = SimpleNamespace(attn_backend=SimpleNamespace(get_name=lambda: "FLASHINFER"))
    with pytest.raises(AttentionRefused, match="FLASHINFER backend keeps the ALiBi slopes but never applies them"):
        refuse_alibi_unsafe_layer(layer)


def test_canary_flashinfer_still_never_reads_its_alibi_slopes():
    """vLLM's FlashInfer backend stores `alibi_slopes` and never uses them (read from its
    source, which is not importable here). When this fails, vLLM changed that: re-check."""
    import importlib.util

    vllm_dir = Path(importlib.util.find_spec("vllm").submodule_search_locations[0])
    source = (vllm_dir / "v1" / "attention" / "backends" / "flashinfer.py").read_text()
    uses = [line.strip() for line in source.splitlines() if "alibi_slopes" in line]
    assert uses == [
        "alibi_slopes: list[float] | None,",
        "if alibi_slopes is not None:",
        "alibi_slopes = torch.tensor(alibi_slopes, dtype=torch.float32)",
        "self.alibi_slopes = alibi_slopes",
    ]


def test_explicit_flash_attn_on_sm90_is_pinned_to_fa2_for_planner_and_layer(replays):
    result = replayed(replays, "sm90-head112-server-FLASH_ATTN")
    assert result["engine_arguments"] == {"attention_config": {"backend": "FLASH_ATTN", "flash_attn_version": 2}}
    assert result["planner_fa_version"] == result["layer_fa_version"] == 2
    assert result["cudagraph_support"] == "UNIFORM_BATCH"
    assert all(batch["error"] is None and batch["kernel_calls"] for batch in result["batches"].values())


# --- the choice itself (pure) -------------------------------------------------------------

MPT_30B = ModelAttention(head_size=112, alibi=True, dtype="bfloat16")


@pytest.mark.parametrize("capability", CAPABILITIES, ids=lambda c: f"sm{c[0]}{c[1]}")
def test_auto_choice_per_capability(capability):
    backend, version = EXPECTED[capability]
    assert choose_attention("auto", Target("cuda", capability), MPT_30B) == AttentionChoice(backend, version)


def test_auto_leaves_cpu_and_models_without_alibi_to_vllm():
    assert choose_attention("auto", Target("cpu"), MPT_30B).engine_arguments() == {}
    llama = ModelAttention(head_size=64, alibi=False, dtype="bfloat16")
    assert choose_attention("auto", Target("cuda", (9, 0)), llama).engine_arguments() == {}


def test_float32_or_odd_head_size_takes_triton_on_ampere():
    assert choose_attention("auto", Target("cuda", (8, 0)), ModelAttention(112, True, "float32")).backend == "TRITON_ATTN"
    assert choose_attention("auto", Target("cuda", (8, 6)), ModelAttention(100, True, "bfloat16")).backend == "TRITON_ATTN"


@pytest.mark.parametrize(
    ("requested", "target", "model", "reason"),
    [
        ("FLASH_ATTN", Target("cuda", (8, 0)), ModelAttention(112, True, "float32"), "not float32"),
        ("FLASH_ATTN", Target("cuda", (9, 0)), ModelAttention(100, True, "bfloat16"), "not 100"),
        ("FLASH_ATTN", Target("cuda", (7, 5)), MPT_30B, "compute capability 8.0"),
        ("TRITON_ATTN", Target("cpu"), MPT_30B, "CPU hosts use CPU_ATTN"),
        ("CPU_ATTN", Target("cuda", (9, 0)), MPT_30B, "vLLM's CPU build"),
        ("TRITON_ATTN", Target("cuda", (9, 0)), ModelAttention(16, True, "bfloat16"), "from 32"),
    ],
)
def test_a_choice_that_cannot_serve_is_refused_naming_the_safe_ones(requested, target, model, reason):
    with pytest.raises(AttentionRefused) as refused:
        choose_attention(requested, target, model)
    message = str(refused.value)
    assert reason in message and "Safe here: auto" in message
    assert requested not in message.split("Safe here:")[1]


def test_explicit_flash_attn_is_pinned_to_fa2_for_alibi():
    choice = choose_attention("FLASH_ATTN", Target("cuda", (9, 0)), MPT_30B)
    assert choice.engine_arguments() == {"attention_config": {"backend": "FLASH_ATTN", "flash_attn_version": 2}}


@pytest.mark.parametrize("name", ["FLASHINFER", "flex_attention", "TRITON_FLASHINFER", "nonsense"])
def test_setting_refuses_backends_that_drop_alibi(name):
    with pytest.raises(ValueError, match="choose one of auto, TRITON_ATTN, FLASH_ATTN, CPU_ATTN"):
        normalise_backend_setting(name)


def test_serve_refuses_flashinfer_in_one_line():
    run = subprocess.run(
        [sys.executable, "-m", "server", "serve", "--attention-backend", "flashinfer"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode != 0
    assert run.stderr.strip().count("\n") == 0 and "never applies them" in run.stderr, run.stderr


def test_serve_refuses_at_start_a_backend_this_host_cannot_run(tmp_path):
    """On this CPU host TRITON_ATTN cannot serve: `serve` stops before building the engine,
    and the log says why and what would work."""
    from harness.server import refused_start_log

    directory = tmp_path / "tiny-mpt"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(mosaicml_config(TinyMpt())))
    log = refused_start_log("--model", str(directory), "--attention-backend", "TRITON_ATTN")
    assert "--attention-backend TRITON_ATTN cannot serve this model (head size 112" in log
    assert "Safe here: auto, CPU_ATTN" in log
