"""AutoAWQ MPT checkpoints load and compute what they encode, `ffn.act.scales` included.

The checkpoint is tiny and synthetic (tests/support/tiny_awq.py): 4-bit AWQ weights in AutoAWQ's
layout and GELU input scales in [0.5, 2]; its reference is transformers' MPT holding the
dequantized weights and computing gelu(x) / scales, the direct computation of the checkpoint.

- Layers: our vLLM model built for it, loaded by its own weight loader, with vLLM's 4-bit kernel
  (CPUWNA16 here; Marlin or AWQ kernels on GPUs): every block's MLP against the direct
  computation, in float16. Dropping the scales moves the MLP output ~800x further.
- Served at tensor parallel 2: each rank loads its half of the scales; the server's log-probs
  of a fixed continuation (echo, teacher-forced) match the reference's.

What CPU cannot exercise: the GPU kernels (Marlin, AWQ GEMM) and GPTQ checkpoints' extra tensors
(g_idx), which the model's `quant_config` lets the loader expect; README "Running on GPUs".
"""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
import torch

from tests.support.server import REPO_ROOT, running_server
from tests.support.tiny_awq import make_tiny_awq_mpt, reference_without_act_scales

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a land far away,"]
CONTINUATION_TOKENS = 12
LOGPROB_ATOL = 0.15  # measured 0.051 (float16 weights and activations); without the act scales: 6.7


def test_awq_mlp_applies_act_scales_like_the_direct_computation(tmp_path, neox_tokenizer_file):
    run = subprocess.run(
        [sys.executable, "-m", "tests.support.tiny_awq", str(tmp_path / "tiny-awq"), str(neox_tokenizer_file)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("AWQ-LAYERS ")]
    assert lines, run.stdout[-2000:] + run.stderr[-4000:]
    errors = json.loads(lines[-1].removeprefix("AWQ-LAYERS "))
    print(errors)
    assert errors["mlp"] <= 1e-3 * errors["scale"], errors  # float16 rounding
    assert errors["mlp_without_act_scales"] > 100 * errors["mlp"], errors
    assert errors["wqkv"] <= 1e-3 * errors["scale"] and errors["out_proj"] <= 1e-3 * errors["scale"]


@torch.no_grad()
def teacher_forced_logprobs(model, token_ids: list[int]) -> list[float]:
    logits = model(torch.tensor([token_ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return [logprobs[i - 1, token].item() for i, token in enumerate(token_ids) if i > 0]


@pytest.mark.engine
def test_awq_checkpoint_served_at_tensor_parallel_2_matches_the_reference(tmp_path, neox_tokenizer_file):
    from transformers import PreTrainedTokenizerFast

    directory, reference = make_tiny_awq_mpt(tmp_path / "tiny-awq-mpt", neox_tokenizer_file)
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
