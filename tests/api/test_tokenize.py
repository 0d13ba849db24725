"""`/tokenize` and `/detokenize` in vLLM's shapes, on the shared server: a chat tokenizes to
exactly the prompt chat sends (`/v1/chat/render`), a prompt to what completions counts, and
`/detokenize` inverts both."""

from __future__ import annotations

import httpx
import pytest
from tokenizers import Tokenizer

from server.engine.default_model import checkpoint_dir
from server.settings import Settings

pytestmark = pytest.mark.engine

CHAT = {
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "What color are blueberries now?"},
    ],
    "documents": [{"text": "Blueberries are now green.", "metadata": {"date": "2021-01-01"}}],
}


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.base_url + path, json=body, timeout=30)


@pytest.fixture(scope="module")
def tokenizer(default_server) -> Tokenizer:
    return Tokenizer.from_file(str(checkpoint_dir(Settings().resolved_cache_dir()) / "tokenizer.json"))


def test_a_chat_tokenizes_exactly_as_chat_renders_it(default_server, default_model_name):
    rendered = post(default_server, "/v1/chat/render", {"model": default_model_name, **CHAT}).json()
    tokenized = post(default_server, "/tokenize", {"model": default_model_name, **CHAT})
    assert tokenized.status_code == 200
    body = tokenized.json()
    assert body["tokens"] == rendered["token_ids"]
    assert body["count"] == rendered["num_tokens"] == len(body["tokens"])
    assert body["max_model_len"] == rendered["max_model_len"]
    assert body["token_strs"] is None


def test_detokenize_inverts_the_chat_tokens(default_server, default_model_name):
    rendered = post(default_server, "/v1/chat/render", {"model": default_model_name, **CHAT}).json()
    tokens = post(default_server, "/tokenize", CHAT).json()["tokens"]  # `model` is optional here
    prompt = post(default_server, "/detokenize", {"tokens": tokens}).json()["prompt"]
    assert prompt == rendered["prompt"]
    assert post(default_server, "/tokenize", {"prompt": prompt}).json()["tokens"] == tokens


def test_a_prompt_tokenizes_as_completions_count_it(default_server, default_model_name, tokenizer):
    prompt = "The capital of France is"
    body = post(default_server, "/tokenize", {"prompt": prompt, "return_token_strs": True}).json()
    assert body["tokens"] == tokenizer.encode(prompt, add_special_tokens=False).ids
    assert body["token_strs"] == [tokenizer.id_to_token(token) for token in body["tokens"]]
    completion = post(
        default_server, "/v1/completions", {"model": default_model_name, "prompt": prompt, "max_tokens": 1}
    ).json()
    assert completion["usage"]["prompt_tokens"] == body["count"]
    assert post(default_server, "/detokenize", {"tokens": body["tokens"]}).json() == {"prompt": prompt}


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/tokenize", {"prompt": "Hi", "messages": [{"role": "user", "content": "Hi"}]}, None),
        ("/tokenize", {}, None),
        ("/tokenize", {"messages": [{"role": "tool", "content": "x"}]}, "messages"),
        ("/detokenize", {"tokens": [10**9]}, "tokens"),
        ("/detokenize", {"tokens": [-1]}, "tokens"),
    ],
    ids=["both forms", "neither form", "bad role", "id outside the vocabulary", "negative id"],
)
def test_bad_requests_are_clear_400s(default_server, path, body, param):
    response = post(default_server, path, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param


def test_an_unknown_model_is_a_404(default_server):
    response = post(default_server, "/tokenize", {"model": "no-such-model", "prompt": "Hi"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
