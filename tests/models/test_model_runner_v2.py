"""Model Runner V2 (vLLM 0.32's GPU default) and our MPT plugin; the `--model-runner` setting.

The replay (tests/support/runner_v2_replay.py, one child process, 10-40 s) runs vLLM's V2 code
with the platform mocked as an H100 (TRITON_ATTN) and an A100 (FLASH_ATTN, FlashAttention 2) and
Triton interpreted: the runner decision for what the server passes, the checks V2 makes of a
loaded model (each also for a model that fails it), one V2 step of a mixed batch through our MPT,
and the forward V2 records into a FULL CUDA graph. What V2 needs of a model is in server/models/README.md.
The rest is pure: the setting, the switch it becomes, and its refusal on vLLM's CPU build.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from server.engine import args as engine_args_module
from server.engine.args import (
    MODEL_RUNNER_SWITCH,
    ModelRunnerRefused,
    engine_args,
    engine_environment,
    model_runner_problem,
)
from server.settings import Settings
from harness.server import REPO_ROOT
from harness.tiny_mpt import TinyMpt, mosaicml_config
from tests.support.settings import serve_settings

MPT_SLOPES_2_HEADS = [2**-4, 2**-8]  # MPT's ALiBi, alibi_bias_max 8
# The replay's GPU kinds (tests/support/runner_v2_replay.GPUS): the server's backend, its, and the backend's CUDA-graph support.
# FlashAttention version, the backend's CUDA-graph support, and the kernel entry point it calls.
GPUS = {"sm90": ("TRITON_ATTN", None, "ALWAYS", "triton"), "sm80": ("FLASH_ATTN", 2, "UNIFORM_BATCH", "fa2")}


@pytest.fixture(scope="module")
def replay(tmp_path_factory) -> dict:
    directory = tmp_path_factory.mktemp("runner-v2")
    # MPT-30B's head size (112), 2 heads; a small vocabulary keeps the logits small.
    (directory / "config.json").write_text(json.dumps(mosaicml_config(TinyMpt(vocab_size=512))))
    # Triton's interpreter must be on before anything imports Triton; an empty
    # CUDA_VISIBLE_DEVICES lets vLLM keep Triton with no GPU driver active.
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop(MODEL_RUNNER_SWITCH, None)
    run = subprocess.run(
        [sys.executable, "-m", "tests.support.runner_v2_replay", str(directory)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env,
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("RUNNER-V2-REPLAY ")]
    assert run.returncode == 0 and lines, f"replay failed ({run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    result = json.loads(lines[-1].removeprefix("RUNNER-V2-REPLAY "))
    assert result["has_triton"] is True  # vLLM saw Triton, as on a GPU host
    return result


# --- the runner decision, replayed -------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "v2"),
    [("auto-triton", True), ("v1-triton", False), ("v2-triton", True), ("auto-no-triton", False), ("v1-no-triton", False)],
)
def test_vllm_decides_the_runner_from_what_the_server_passes(replay, case, v2):
    """A GPU (Triton imports) gets V2 by default; `v1` turns it off; the CPU build never has it."""
    assert replay["decisions"][case]["v2"] is v2


def test_a_forced_v2_without_triton_is_refused_by_vllm_as_the_cli_refuses_it(replay):
    assert "Model Runner V2 requires Triton" in replay["decisions"]["v2-no-triton"]["refused"]


def test_the_gpu_default_captures_full_and_piecewise_cuda_graphs(replay):
    assert replay["decisions"]["auto-triton"]["cudagraph_mode"] == "FULL_AND_PIECEWISE"


# --- per GPU kind: what V2 checks of the loaded model, one step, one capture forward ------------


@pytest.fixture(params=sorted(GPUS), ids=lambda name: f"{name}-{GPUS[name][0]}")
def gpu(request, replay) -> SimpleNamespace:
    """One GPU kind's replay, with what the server's choice for it must give."""
    result = replay["gpus"][request.param]
    assert "crash" not in result, result["crash"]
    assert result["v2"] is True  # the server's engine config on this GPU runs V2
    backend, fa_version, cudagraphs, op = GPUS[request.param]
    return SimpleNamespace(backend=backend, fa_version=fa_version, cudagraphs=cudagraphs, op=op, **result)


def test_v2_takes_mpt_as_a_plain_decoder_that_generates(gpu):
    checks = gpu.checks
    assert checks["model_state"] == "DefaultModelState"
    assert checks["tasks"] == ["generate"]
    assert checks["extra_model_inputs"] == []  # no M-RoPE: the model gets V2's flat positions
    assert checks["cudagraph_mode"] == "FULL_AND_PIECEWISE"


def test_a_model_without_embed_input_ids_would_generate_nothing(gpu):
    """The control: vLLM's text-generation interface less `embed_input_ids` offers no task."""
    assert gpu.checks["tasks_without_embed_input_ids"] == []


def test_piecewise_cuda_graphs_need_the_compiled_submodule_mpt_has(gpu):
    checks = gpu.checks
    assert checks["compiled_submodule"] is True  # MptModel's @support_torch_compile
    # The control: the same model with its compile wrapper off is refused at capture.
    assert "piecewise CUDA graphs" in checks["capture_without_compiled_submodule"]
    assert "not torch-compiled" in checks["capture_without_compiled_submodule"]


def test_v2_builds_the_servers_attention_backend_for_each_gpu(gpu):
    attention = gpu.attention
    assert attention["backends"] == [gpu.backend]
    assert attention["fa_version"] == gpu.fa_version
    # TRITON_ATTN: FULL graphs for any batch; FA2: FULL graphs for uniform decode batches.
    assert attention["min_cudagraph_support"] == gpu.cudagraphs
    assert attention["kernel_block_sizes"] == [16]


def test_v2s_input_kernels_give_each_request_its_tokens_positions_and_lengths(gpu):
    inputs = gpu.step["inputs"]
    # A new 5-token prompt, a 4-token chunk after 16, a decode after 30; the unused slot zeroed.
    assert inputs["input_ids_match_the_requests"] is True
    assert inputs["positions"] == [0, 1, 2, 3, 4, 16, 17, 18, 19, 30]
    assert inputs["seq_lens"] == [5, 20, 31, 0]


def test_the_attention_kernel_gets_mpts_slopes_and_v2s_lengths_in_every_layer(gpu):
    calls = gpu.step["kernel_calls"]
    assert len(calls) == TinyMpt().n_layers
    for call in calls:
        assert call["op"] == gpu.op
        assert call["alibi"] == MPT_SLOPES_2_HEADS  # ALiBi is MPT's only position signal
        assert call["cu_seqlens_q"] == [0, 5, 9, 10]
        assert call["seqused_k"] == [5, 20, 31]
        assert (call["max_seqlen_q"], call["max_seqlen_k"], call["causal"]) == (5, 31, True)


def test_the_step_writes_exactly_the_scheduled_tokens_kv_and_yields_logits(gpu):
    step = gpu.step
    assert step["kv_slots_written"] == step["kv_slots_expected"]
    assert len(step["kv_slots_written"]) == 10
    assert step["hidden_shape"] == [10, TinyMpt().d_model]
    assert step["logits_shape"] == [10, 512]
    assert step["inputs_embeds_path_equal"] is True  # V2's prompt-embeds path: embed_input_ids


def test_the_full_graph_capture_forward_passes_the_kernels_guards_with_alibi(gpu):
    """What V2 records into a FULL CUDA graph for a decode batch: capture-time metadata sized for
    the longest context, MPT's slopes, no KV written by the padding slots."""
    capture = gpu.capture
    assert capture["error"] is None
    assert capture["hidden_shape"] == [3, TinyMpt().d_model]
    assert capture["kv_unchanged"] is True
    assert len(capture["kernel_calls"]) == TinyMpt().n_layers
    for call in capture["kernel_calls"]:
        assert call["op"] == gpu.op
        assert call["alibi"] == MPT_SLOPES_2_HEADS
        assert call["cu_seqlens_q"] == [0, 1, 2, 3] and call["max_seqlen_q"] == 1
        assert call["max_seqlen_k"] == TinyMpt().max_seq_len  # graphs replay at any length


# --- the setting (pure) ------------------------------------------------------------------------


def test_auto_by_default_and_chosen_by_flag_or_environment(monkeypatch):
    monkeypatch.delenv("AIROBOROS_MODEL_RUNNER", raising=False)
    assert serve_settings().model_runner == "auto"
    assert serve_settings("--model-runner", "v1").model_runner == "v1"
    monkeypatch.setenv("AIROBOROS_MODEL_RUNNER", "v2")
    assert serve_settings().model_runner == "v2"
    assert serve_settings("--model-runner", "auto").model_runner == "auto"  # the flag wins


def test_an_unknown_runner_is_refused():
    with pytest.raises(SystemExit, match="--model-runner"):
        serve_settings("--model-runner", "v3")


@pytest.mark.parametrize(("runner", "switch"), [("auto", None), ("v1", "0"), ("v2", "1")])
def test_the_setting_becomes_vllms_switch(runner, switch):
    assert engine_environment(Settings(model_runner=runner)).get(MODEL_RUNNER_SWITCH) == switch


def test_vllm_reads_the_switch_the_server_writes(monkeypatch):
    import vllm.envs

    for runner, expected in (("v1", False), ("v2", True)):
        monkeypatch.setenv(MODEL_RUNNER_SWITCH, engine_environment(Settings(model_runner=runner))[MODEL_RUNNER_SWITCH])
        assert vllm.envs.VLLM_USE_V2_MODEL_RUNNER is expected
    monkeypatch.delenv(MODEL_RUNNER_SWITCH)
    assert vllm.envs.VLLM_USE_V2_MODEL_RUNNER is None  # "use config defaults"


# --- the refusal on vLLM's CPU build (pure) ----------------------------------------------------


def test_the_cpu_build_has_no_v2_runner(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(mosaicml_config(TinyMpt())))
    problem = model_runner_problem(Settings(model_runner="v2"))
    assert problem is not None and problem.startswith("--model-runner v2: vLLM's CPU build")
    assert model_runner_problem(Settings()) is None and model_runner_problem(Settings(model_runner="v1")) is None
    with pytest.raises(ModelRunnerRefused):  # also for whoever builds engine args directly
        engine_args(Settings(model_runner="v2", model=tmp_path), tmp_path, "mpt")


def test_a_gpu_build_may_choose_v2(monkeypatch):
    monkeypatch.setattr(engine_args_module, "_vllm_cpu_build", lambda: False)
    assert model_runner_problem(Settings(model_runner="v2")) is None


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_serve_refuses_v2_on_the_cpu_build_in_one_line_before_loading(how):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIROBOROS_")}
    args = [sys.executable, "-m", "server", "serve"]
    if how == "flag":
        args += ["--model-runner", "v2"]
    else:
        env["AIROBOROS_MODEL_RUNNER"] = "v2"
    result = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("airoboros-server: --model-runner v2: vLLM's CPU build has no Model Runner V2")
    assert "Traceback" not in result.stderr and result.stdout == ""
