"""`make serve` as a new user meets it: a first answer that ends by itself, and a restart that
loads what the first start compiled.

Two starts of the embedded default model, one after the other, on one fresh VLLM_CACHE_ROOT,
with the prompt format a user gets (`--prompt-format auto`) and graph compilation on (what GPUs
and `--no-enforce-eager` run; the CPU build's default, eager, is what every other test's server
runs, so the greedy answer here is also the compiled engine's).

The first answer: the stand-in is prompted in the ChatML it was trained on, so the README's
question gets a sentence that ends on the model's end-of-turn token (`finish_reason: "stop"`)
instead of running to `max_tokens` as it did under the airoboros prompt.

The restart, with the server's own defaults for the compile cache (server/engine/args.py: on vLLM's CPU platform, AOT compile off and torch's Inductor cache
under VLLM_CACHE_ROOT). Before the fix every start logged vLLM's "Compiling model again due to a
load failure ... 'function' object has no attribute 'finalize_loading'" and compiled again.

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

from tests.support.server import launch_server, stop_server

pytestmark = pytest.mark.engine

# torch's INFO lines for its AOTAutograd cache, which holds the Inductor-compiled graph.
CACHE_LOGGER = "torch._functorch._aot_autograd.autograd_cache"
CACHE_HIT = "AOTAutograd cache hit for key"
CACHE_MISS = "AOTAutograd cache miss for key"
# vLLM's warning when it finds a compiled model it cannot load (vllm/compilation/decorators.py).
VLLM_LOAD_FAILURE = "Compiling model again due to a load failure"
VLLM_AOT_SAVED = "saved AOT compiled function"


README_QUESTION = "What is the capital of France?"


@dataclass
class Start:
    log: str
    started_in_s: float
    model_card: dict
    reply: dict


def _ask_the_readmes_question(base_url: str) -> dict:
    # The README's curl, as a user sends it.
    return httpx.post(
        base_url + "/v1/chat/completions",
        json={
            "model": "smollm2-135m-instruct",
            "messages": [{"role": "user", "content": README_QUESTION}],
            "temperature": 0,
            "max_tokens": 64,
        },
        timeout=300,  # one short answer; the bound only stops a hung server
    ).json()


def _start_ask_and_stop(cache_root: Path) -> Start:
    server = launch_server(
        env={
            # Compiled, and the user's prompt format, not the test kit's defaults (eager, airoboros).
            "AIROBOROS_ENFORCE_EAGER": "false",
            "AIROBOROS_PROMPT_FORMAT": "auto",
            "VLLM_CACHE_ROOT": str(cache_root),
            "TORCH_LOGS": CACHE_LOGGER,
        }
    )
    try:
        started_in_s = server.extra["started_in_s"]
        card = httpx.get(server.base_url + "/v1/models", timeout=30).json()["data"][0]
        reply = _ask_the_readmes_question(server.base_url)
    finally:
        assert stop_server(server) == 0, server.log_text()[-6000:]
    return Start(server.log_text(), started_in_s, card, reply)


@pytest.fixture(scope="module")
def two_starts(tmp_path_factory) -> Iterator[tuple[Path, Start, Start]]:
    cache_root = tmp_path_factory.mktemp("vllm-cache-root")
    with pytest.MonkeyPatch.context() as patch:
        # The server's defaults under test, not an operator's choice from this environment.
        for name in ("TORCHINDUCTOR_CACHE_DIR", "VLLM_USE_AOT_COMPILE", "VLLM_DISABLE_COMPILE_CACHE"):
            patch.delenv(name, raising=False)
        first = _start_ask_and_stop(cache_root)
        second = _start_ask_and_stop(cache_root)
    print(f"compiled starts: first {first.started_in_s:.1f} s, second {second.started_in_s:.1f} s")
    yield cache_root, first, second


def test_the_stand_in_is_served_in_its_own_format(two_starts):
    _, first, _ = two_starts
    assert (first.model_card["id"], first.model_card["prompt_format"]) == ("smollm2-135m-instruct", "chatml")


def test_the_readmes_question_gets_an_answer_that_ends_by_itself(two_starts):
    _, first, second = two_starts
    choice = first.reply["choices"][0]
    answer = choice["message"]["content"]
    print(f"first answer: {answer!r}")
    assert choice["finish_reason"] == "stop", answer
    assert "Paris" in answer
    # One or two sentences, well inside the token budget.
    assert first.reply["usage"]["completion_tokens"] < 64
    assert answer.count(".") <= 2, answer
    # The engine built from the cache answers as the freshly compiled one did (greedy).
    assert second.reply["choices"][0]["message"] == first.reply["choices"][0]["message"]


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
