"""A merged checkpoint serves: our real server on it gives the peft model's greedy tokens.

The plain case (harness/lora_checkpoints.py: MosaicML-layout bf16 `.bin` shards and a peft
LoRA on Wqkv, out_proj, up_proj and down_proj) is merged by the real command in a child process,
in float32, and served by the real server (vLLM on the CPU, one start for the module). The
reference is the unmerged peft model's `generate` in transformers (float32): x·W + scale·(x·A)·B
instead of x·(W + scale·B·A), equal up to float32 rounding, which at 3.7e-5 in logprobs
(tests/models/test_served_mpt.py) leaves greedy choices alone.
"""

from __future__ import annotations

import httpx
import pytest

from harness.lora_checkpoints import run_merge, shared_case
from harness.server import running_server
from harness.tiny_mpt import reference_greedy

MAX_TOKENS = 24
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "USER: What is 2+2?\nASSISTANT:",
    "Once upon a time, in a land far away, there lived",
]


@pytest.fixture(scope="module")
def merged(tmp_path_factory, neox_tokenizer_file):
    case = shared_case("plain", tmp_path_factory, neox_tokenizer_file)
    out = tmp_path_factory.mktemp("served") / "tiny-mpt-merged"
    result = run_merge(case.base, case.adapter, out, "--dtype", "float32")
    assert result.returncode == 0, result.stderr
    assert "8 merged with LoRA" in result.stdout
    return case, out


@pytest.fixture(scope="module")
def served(merged):
    _, out = merged
    with running_server("--model", str(out), "--dtype", "float32") as server:
        yield server


@pytest.mark.engine
def test_served_merged_checkpoint_gives_the_peft_models_greedy_tokens(merged, served):
    from transformers import PreTrainedTokenizerFast

    case, out = merged
    tokenizer = PreTrainedTokenizerFast.from_pretrained(out)
    prompt_ids = [tokenizer.encode(prompt, add_special_tokens=False) for prompt in PROMPTS]
    expected = [reference_greedy(case.peft_model, ids, MAX_TOKENS)[0] for ids in prompt_ids]
    without_adapter = [reference_greedy(case.model, ids, MAX_TOKENS)[0] for ids in prompt_ids]
    # The adapter must matter, or serving the base by mistake would pass.
    assert sum(a != b for a, b in zip(expected, without_adapter, strict=True)) >= 3
    response = httpx.post(
        served.base_url + "/v1/completions",
        json={
            "model": out.name,
            "prompt": PROMPTS,
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "ignore_eos": True,
            "logprobs": 1,
            "return_tokens_as_token_ids": True,
        },
        timeout=600,
    )
    assert response.status_code == 200, response.text
    choices = sorted(response.json()["choices"], key=lambda choice: choice["index"])
    for prompt, want, choice in zip(PROMPTS, expected, choices, strict=True):
        tokens = [int(token.removeprefix("token_id:")) for token in choice["logprobs"]["tokens"]]
        assert tokens == want, prompt
