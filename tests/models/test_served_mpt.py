"""Our vLLM MPT, served over HTTP, computes what transformers' MptForCausalLM computes.

Each case is a tiny random MPT checkpoint (fp32) written by harness/tiny_mpt.py; the real
server serves it (`python -m server serve`, one server per case, the next case's starting while
the current case's tests run)
and `/v1/completions` must return transformers' greedy tokens, token for token for 32 tokens
with EOS ignored, and the same logprob for each within LOGPROB_ATOL.

Why LOGPROB_ATOL = 1e-3 in fp32: both sides compute the same function in float32, in a different
order (oneDNN GEMMs and vLLM's paged attention with an online softmax, versus PyTorch matmuls
and a full softmax), so logits differ by rounding only. Measured: at most 3.7e-5 across these
cases, the same order as transformers disagreeing with itself (its KV-cached generate versus one
full forward pass: up to 1.1e-5). 1e-3 leaves ~25x room for other CPUs' kernels and stays far
under what a defect does: scaling every slope by 1% (alibi_bias_max 7.9 for 8) moves logprobs
by 0.04-0.2; slopes not interleaved for 3 heads, or two tensor-parallel ranks' slopes swapped,
move them by 7-12 and change the greedy text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.golden_cases import GOLDEN_CASES
from harness.server import RunningServer, launch_server, stop_server, wait_until_ready
from harness.tiny_mpt import TinyMpt, build_reference, make_tiny_mpt, reference_greedy

MAX_TOKENS = 32
LOGPROB_ATOL = 1e-3
G1_NEOX_TAIL = [21893, 6905, 5656, 27, 209]  # " ASS", "IST", "ANT", ":", " "
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a land far away, there lived",
    "USER: What is 2+2?\nASSISTANT:",
    # ~300 tokens: ALiBi's distance penalty must hold far from the diagonal too.
    " ".join(["The quick brown fox jumps over the lazy dog."] * 30),
]

# case → (tiny_mpt options, extra server flags, extra server environment). Each case costs an
# engine start (15-20 s on an idle 2-core CPU, minutes on a busy one), so options share cases.
CASES: dict[str, tuple[dict, tuple[str, ...], dict[str, str]]] = {
    # The plain model, MPT-30B's head size (112), in MPT-30B's own (remote-code) config dialect.
    "plain_mosaicml_dialect": ({"dialect": "mosaicml"}, (), {}),
    # Transformers' dialect from here on.
    "non_power_of_two_heads": ({"n_heads": 3, "d_model": 192}, (), {}),
    # Both on, as MosaicML orders them: clamp the fused qkv, then norm q and k.
    "clip_qkv_and_qk_ln": ({"clip_qkv": 2.0, "qk_ln": True}, (), {}),
    # 6 heads over 2 ranks: each rank must take its own 3 of MPT's interleaved slopes (6 is not
    # a power of two); qk_ln's norm spans all heads, so the shards are gathered for it.
    "tensor_parallel_2": (
        {"n_heads": 6, "d_model": 384, "qk_ln": True},
        ("--tensor-parallel-size", "2"),
        {"VLLM_CPU_OMP_THREADS_BIND": "0|1"},
    ),
    # Compiled, as the server runs on GPUs (Inductor here, CUDA graphs there), where every case
    # above runs eager: MosaicML's dialect with both options at tensor parallel 2 covers what
    # test_first_run.py's compiled transformers-dialect model does not.
    "compiled_mosaicml_dialect_tensor_parallel_2": (
        {"dialect": "mosaicml", "n_heads": 6, "d_model": 384, "clip_qkv": 2.0, "qk_ln": True},
        ("--tensor-parallel-size", "2"),
        {"VLLM_CPU_OMP_THREADS_BIND": "0|1", "AIROBOROS_ENFORCE_EAGER": "false"},
    ),
}
COMPILED = {case for case, (_, _, env) in CASES.items() if env.get("AIROBOROS_ENFORCE_EAGER") == "false"}


@dataclass
class Reference:
    prompt_ids: list[int]
    tokens: list[int]
    logprobs: list[float]


@dataclass
class TinyCase:
    case: str
    name: str
    directory: Path
    references: list[Reference]


def checkpoint_name(case: str) -> str:
    return f"tiny-mpt-{case.replace('_', '-')}"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, neox_tokenizer_file) -> dict[str, tuple[Path, object]]:
    """Every case's tiny checkpoint and its transformers model, written up front (seconds), so
    the next case's server can start while the current one's tests run."""
    return {
        case: make_tiny_mpt(tmp_path_factory.mktemp(case) / checkpoint_name(case), neox_tokenizer_file, **options)
        for case, (options, _, _) in CASES.items()
    }


@pytest.fixture(scope="module")
def tiny(request, checkpoints) -> TinyCase:
    """`request.param`'s tiny checkpoint and transformers' greedy answers to PROMPTS."""
    from transformers import PreTrainedTokenizerFast

    case = request.param
    directory, model = checkpoints[case]
    tokenizer = PreTrainedTokenizerFast.from_pretrained(directory)
    references = []
    for prompt in PROMPTS:
        prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
        references.append(Reference(prompt_ids, *reference_greedy(model, prompt_ids, MAX_TOKENS)))
    return TinyCase(case, checkpoint_name(case), directory, references)


class CaseServers:
    """The cases' servers, at most two alive: the one under test, and the next case's, starting
    while the current one's tests run (an engine start is most of a case's time)."""

    def __init__(self, checkpoints: dict[str, tuple[Path, object]]) -> None:
        self.checkpoints = checkpoints
        self.started: dict[str, RunningServer] = {}

    def _launch(self, case: str) -> None:
        directory, _ = self.checkpoints[case]
        _, flags, env = CASES[case]
        # No --max-model-len: the checkpoint's max_seq_len must set it.
        self.started[case] = launch_server("--model", str(directory), "--dtype", "float32", *flags, env=env, wait_ready=False)

    def ready(self, case: str) -> RunningServer:
        if case not in self.started:
            self._launch(case)
        following = [c for c in list(CASES)[list(CASES).index(case) + 1:] if c not in self.started]
        if following and len(self.started) < 2:
            self._launch(following[0])
        server = self.started[case]
        try:
            wait_until_ready(server)
        except BaseException:
            self.stop(case)
            raise
        return server

    def stop(self, case: str) -> None:
        stop_server(self.started.pop(case))

    def close(self) -> None:
        for case in list(self.started):
            self.stop(case)


@pytest.fixture(scope="module")
def case_servers(checkpoints):
    servers = CaseServers(checkpoints)
    try:
        yield servers
    finally:
        servers.close()


@pytest.fixture(scope="module")
def served(tiny: TinyCase, request, case_servers: CaseServers) -> RunningServer:
    """The real server on `tiny`'s checkpoint."""
    yield case_servers.ready(request.param)
    case_servers.stop(request.param)


def complete(server: RunningServer, model: str, prompts: list[str]) -> list[dict]:
    response = httpx.post(
        server.base_url + "/v1/completions",
        json={
            "model": model,
            "prompt": prompts,
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "logprobs": 1,
            "ignore_eos": True,
            "return_tokens_as_token_ids": True,
        },
        timeout=600,
    )
    assert response.status_code == 200, response.text
    return sorted(response.json()["choices"], key=lambda choice: choice["index"])


def both_fixtures(*cases: str):
    return pytest.mark.parametrize(("tiny", "served"), [(c, c) for c in cases], indirect=True, ids=cases)


@pytest.mark.engine
@both_fixtures(*CASES)
def test_greedy_tokens_and_logprobs_match_transformers(tiny: TinyCase, served: RunningServer, record_property):
    choices = complete(served, tiny.name, PROMPTS)
    largest = 0.0
    for reference, choice in zip(tiny.references, choices, strict=True):
        served_tokens = [int(token.removeprefix("token_id:")) for token in choice["logprobs"]["tokens"]]
        assert served_tokens == reference.tokens
        differences = [
            abs(served_lp - reference_lp)
            for served_lp, reference_lp in zip(choice["logprobs"]["token_logprobs"], reference.logprobs, strict=True)
        ]
        assert max(differences) <= LOGPROB_ATOL, differences
        largest = max(largest, *differences)
    record_property("largest_logprob_difference", largest)
    print(f"{tiny.name}: largest logprob difference {largest:.2e}")
    # The mode is the one the case names, in the engine configuration vLLM logs (on its CPU build
    # "compiled" is torch.compile traced once by Dynamo and lowered by Inductor).
    compiled = tiny.case in COMPILED
    log = served.log_text()
    assert f"enforce_eager={not compiled}" in log
    assert ("'mode': <CompilationMode.NONE" in log) != compiled


@pytest.mark.engine
@both_fixtures("plain_mosaicml_dialect")
def test_max_seq_len_becomes_the_context_limit(tiny: TinyCase, served: RunningServer):
    card = httpx.get(f"{served.base_url}/v1/models/{tiny.name}", timeout=30).json()
    assert card["max_model_len"] == 512  # config.json's max_seq_len; the server was given none
    response = httpx.post(
        served.base_url + "/v1/completions",
        json={"model": tiny.name, "prompt": " ".join(["dog"] * 500), "max_tokens": 32},
        timeout=60,
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.engine
@both_fixtures("plain_mosaicml_dialect")
def test_g1_renders_to_the_44_gpt_neox_ids(tiny: TinyCase, served: RunningServer):
    # The airoboros prompt of golden case G1 in MPT's own (GPT-NeoX) tokenizer, as the server renders it.
    response = httpx.post(
        served.base_url + "/v1/chat/render", json={"model": tiny.name, "messages": GOLDEN_CASES[0].messages}, timeout=60
    )
    body = response.json()
    assert body["prompt"] == GOLDEN_CASES[0].prompt
    assert body["num_tokens"] == 44
    assert body["token_ids"][-5:] == G1_NEOX_TAIL
    assert body["max_model_len"] == 512  # the checkpoint's max_seq_len drives the context


@pytest.mark.parametrize("tiny", list(CASES), indirect=True)
def test_reference_greedy_text_varies(tiny: TinyCase):
    # A reference stuck on one token would make "token for token" a weak claim.
    for reference in tiny.references:
        assert len(set(reference.tokens)) >= 5, reference.tokens


@pytest.mark.parametrize("option", ["clip_qkv", "qk_ln"])
def test_each_option_changes_the_reference(option, neox_tokenizer_file):
    # Otherwise the clip_qkv_and_qk_ln case could pass with that option ignored.
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(neox_tokenizer_file))
    prompt_ids = tokenizer.encode(PROMPTS[2], add_special_tokens=False)
    options = CASES["clip_qkv_and_qk_ln"][0]
    without = {**options, option: {"clip_qkv": None, "qk_ln": False}[option]}
    both_tokens, _ = reference_greedy(build_reference(TinyMpt(**options)), prompt_ids, MAX_TOKENS)
    without_tokens, _ = reference_greedy(build_reference(TinyMpt(**without)), prompt_ids, MAX_TOKENS)
    assert both_tokens != without_tokens
