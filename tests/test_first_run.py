"""`make serve` as a new user meets it, and a compiled engine's restart.

The first answer: the embedded stand-in with the settings a user gets on this CPU (eager, the
CPU build's default, and `--prompt-format auto`) is prompted in the ChatML it was trained on, so
the README's question gets a sentence that ends on the model's end-of-turn token
(`finish_reason: "stop"`) instead of running to `max_tokens` as it did under the airoboros prompt.

The restart: two starts with graph compilation on (`--no-enforce-eager`, what GPUs run by
default), one after the other, on one fresh VLLM_CACHE_ROOT, of a tiny MPT (our vLLM plugin, a
few seconds to compile), with the server's own defaults for the compile cache
(server/engine/args.py: on vLLM's CPU platform, AOT compile off and torch's Inductor cache under
VLLM_CACHE_ROOT). Before the fix every start logged vLLM's "Compiling model again due to a load
failure ... 'function' object has no attribute 'finalize_loading'" and compiled again. Both
starts must also give transformers' greedy tokens: the compiled plugin, and the plugin loaded
from the cache, compute what the reference does.

On this path vLLM itself logs nothing about the cache, so the starts run with torch's
AOTAutograd-cache logger on (TORCH_LOGS): the first start must miss (a real cold start, which
also shows the cache follows VLLM_CACHE_ROOT rather than a warm /tmp/torchinductor_<user>), the
second must hit and miss nothing, which means Inductor generated and built no code again. Dynamo
still traces the model on every start; that is what remains of a compiled restart's cost.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from harness.server import launch_server, running_server, stop_server
from harness.tiny_mpt import make_tiny_mpt, reference_greedy

pytestmark = pytest.mark.engine

README_QUESTION = "What is the capital of France?"
# torch's INFO lines for its AOTAutograd cache, which holds the Inductor-compiled graph.
CACHE_LOGGER = "torch._functorch._aot_autograd.autograd_cache"
CACHE_HIT = "AOTAutograd cache hit for key"
CACHE_MISS = "AOTAutograd cache miss for key"
# vLLM's warning when it finds a compiled model it cannot load (vllm/compilation/decorators.py).
VLLM_LOAD_FAILURE = "Compiling model again due to a load failure"
VLLM_AOT_SAVED = "saved AOT compiled function"
TINY_PROMPT = "The capital of France is"
TINY_TOKENS = 16
# As in tests/models/test_served_mpt.py: both sides compute the same function in float32.
LOGPROB_ATOL = 1e-3


# --- the first answer ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def users_server():
    with running_server(env={"AIROBOROS_PROMPT_FORMAT": "auto"}) as server:
        yield server


def test_the_stand_in_is_served_in_its_own_format(users_server):
    card = httpx.get(users_server.base_url + "/v1/models", timeout=30).json()["data"][0]
    assert (card["id"], card["prompt_format"]) == ("smollm2-135m-instruct", "chatml")


def test_the_readmes_question_gets_an_answer_that_ends_by_itself(users_server):
    # The README's curl, as a user sends it.
    reply = httpx.post(
        users_server.base_url + "/v1/chat/completions",
        json={
            "model": "smollm2-135m-instruct",
            "messages": [{"role": "user", "content": README_QUESTION}],
            "temperature": 0,
            "max_tokens": 64,
        },
        timeout=300,  # one short answer; the bound only stops a hung server
    ).json()
    choice = reply["choices"][0]
    answer = choice["message"]["content"]
    print(f"first answer: {answer!r}")
    assert choice["finish_reason"] == "stop", answer
    assert "Paris" in answer
    # One or two sentences, well inside the token budget.
    assert reply["usage"]["completion_tokens"] < 64
    assert answer.count(".") <= 2, answer


# --- a compiled restart ----------------------------------------------------------------------


@dataclass
class Start:
    log: str
    started_in_s: float
    choice: dict


def _start_complete_and_stop(model_dir: Path, cache_root: Path) -> Start:
    server = launch_server(
        "--model", str(model_dir), "--dtype", "float32",
        env={"AIROBOROS_ENFORCE_EAGER": "false", "VLLM_CACHE_ROOT": str(cache_root), "TORCH_LOGS": CACHE_LOGGER},
    )
    try:
        started_in_s = server.extra["started_in_s"]
        response = httpx.post(
            server.base_url + "/v1/completions",
            json={
                "model": model_dir.name, "prompt": TINY_PROMPT, "max_tokens": TINY_TOKENS, "temperature": 0,
                "logprobs": 1, "ignore_eos": True, "return_tokens_as_token_ids": True,
            },
            timeout=300,  # a few tokens; the bound only stops a hung server
        )
        assert response.status_code == 200, response.text
    finally:
        assert stop_server(server) == 0, server.log_text()[-6000:]
    return Start(server.log_text(), started_in_s, response.json()["choices"][0])


@pytest.fixture(scope="module")
def tiny_mpt(tmp_path_factory, neox_tokenizer_file):
    directory, model = make_tiny_mpt(tmp_path_factory.mktemp("compiled") / "tiny-mpt-compiled", neox_tokenizer_file)
    from transformers import PreTrainedTokenizerFast

    prompt_ids = PreTrainedTokenizerFast.from_pretrained(directory).encode(TINY_PROMPT, add_special_tokens=False)
    return directory, reference_greedy(model, prompt_ids, TINY_TOKENS)


@pytest.fixture(scope="module")
def two_starts(tmp_path_factory, tiny_mpt) -> Iterator[tuple[Path, Start, Start]]:
    directory, _ = tiny_mpt
    cache_root = tmp_path_factory.mktemp("vllm-cache-root")
    with pytest.MonkeyPatch.context() as patch:
        # The server's defaults under test, not an operator's choice from this environment.
        for name in ("TORCHINDUCTOR_CACHE_DIR", "VLLM_USE_AOT_COMPILE", "VLLM_DISABLE_COMPILE_CACHE"):
            patch.delenv(name, raising=False)
        first = _start_complete_and_stop(directory, cache_root)
        second = _start_complete_and_stop(directory, cache_root)
    print(f"compiled starts: first {first.started_in_s:.1f} s, second {second.started_in_s:.1f} s")
    yield cache_root, first, second


def test_the_first_start_compiles_into_vllm_cache_root(two_starts):
    cache_root, first, _ = two_starts
    assert CACHE_MISS in first.log, first.log[-6000:]
    assert CACHE_HIT not in first.log
    assert VLLM_LOAD_FAILURE not in first.log
    assert VLLM_AOT_SAVED not in first.log, "AOT compile is on: its artifact cannot be loaded on CPU"
    assert any((cache_root / "torchinductor" / "aotautograd").iterdir())


def test_the_second_start_loads_the_compiled_model_and_compiles_nothing(two_starts):
    _, _, second = two_starts
    assert VLLM_LOAD_FAILURE not in second.log
    assert CACHE_HIT in second.log, second.log[-6000:]
    assert CACHE_MISS not in second.log


def test_compiled_and_cached_engines_give_transformers_greedy_tokens(two_starts, tiny_mpt):
    _, (reference_tokens, reference_logprobs) = tiny_mpt
    _, first, second = two_starts
    for start in (first, second):
        served = [int(token.removeprefix("token_id:")) for token in start.choice["logprobs"]["tokens"]]
        assert served == reference_tokens
        differences = [abs(a - b) for a, b in zip(start.choice["logprobs"]["token_logprobs"], reference_logprobs, strict=True)]
        assert max(differences) <= LOGPROB_ATOL, differences
