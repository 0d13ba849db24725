"""`airoboros-server plan` and the start-time check on GPU hosts (pure: no engine, no GPU)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from server.cli import main as cli_main
from server.mpt.catalog import CATALOG, GIB, MIB
from server.engine.platform import current_gpu
from server.gpu.plan import GpuPlanRefused, check_at_start
from server.gpu.plan import main as plan_main
from server.mpt.sizing import MPT_30B, Setup, kv_bytes_per_token, make_plan, weight_bytes_per_gpu
from server.settings import Settings
from harness.tiny_mpt import TinyMpt, mosaicml_config


def plan_json(capsys, *args: str) -> tuple[int, dict]:
    code = plan_main([*args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_mpt_30b_bf16_on_two_h100_with_tensor_parallel_2(capsys):
    code, plan = plan_json(capsys, "--gpu", "h100-sxm", "--tensor-parallel-size", "2", "--max-model-len", "8192")
    assert code == 0 and plan["verdict"] == "fits"
    assert plan["weights_gib_per_gpu"] == pytest.approx(27.9, abs=0.05)
    assert plan["kv_bytes_per_token"] == 1_376_256
    assert 7 <= plan["max_len_sequences"] < 8.5
    assert plan["decode_tokens_per_s_bound"] == pytest.approx(110, rel=0.05)
    assert plan["attention_backend"] == "TRITON_ATTN" and plan["flash_attn_version"] is None
    assert plan["kv_cache_tokens"] % 16 == 0  # whole KV blocks


def test_one_h100_warns_that_about_one_full_sequence_fits(capsys):
    code = plan_main(["--gpu", "h100-sxm"])
    text = capsys.readouterr().out
    assert code == 0
    assert "WARNING: only about 1.3 full-length (8,192-token) sequence fits" in text
    assert "--tensor-parallel-size 2" in text


@pytest.mark.parametrize("gpu", ["a10", "l4"])
def test_one_24_gb_gpu_refuses_bf16_and_says_what_to_change(capsys, gpu):
    code, plan = plan_json(capsys, "--gpu", gpu, "--dtype", "bfloat16")
    assert code == 1 and plan["verdict"] == "impossible"
    assert "weights need 55.8 GiB per GPU" in plan["problems"][0]
    advice = " ".join(plan["suggestions"])
    assert "--tensor-parallel-size 4" in advice  # more GPUs
    assert "4-bit AWQ or GPTQ" in advice and "--max-model-len 2048" in advice  # quantize, shorter context


def test_flash_attention_2_is_reported_on_ampere(capsys):
    _, plan = plan_json(capsys, "--gpu", "a100-80gb", "--tensor-parallel-size", "2")
    assert (plan["attention_backend"], plan["flash_attn_version"]) == ("FLASH_ATTN", 2)


def test_weights_match_the_parameter_count_and_split_across_ranks():
    assert weight_bytes_per_gpu(MPT_30B, 1, "bfloat16", "none") == 2 * MPT_30B.parameter_count()
    halves = weight_bytes_per_gpu(MPT_30B, 2, "bfloat16", "none")
    replicated_norms = (2 * 48 + 1) * 7168 * 2
    assert 2 * halves - replicated_norms == 2 * MPT_30B.parameter_count()
    awq = weight_bytes_per_gpu(MPT_30B, 1, "float16", "awq")
    linear, embeddings, norms = 48 * 7168 * (3 * 7168 + 7168 + 2 * 4 * 7168), 50432 * 7168, 97 * 7168
    # 4 bits per linear weight plus an fp16 scale and a 4-bit zero per 128; the rest 16-bit
    assert awq == int(linear * (4 + 20 / 128) / 8 + (embeddings + norms) * 2)
    assert awq / GIB == pytest.approx(15.0, abs=0.05)


def test_kv_bytes_per_token_is_layers_times_k_and_v():
    assert kv_bytes_per_token(MPT_30B, "bfloat16") == 48 * 2 * 64 * 112 * 2
    assert kv_bytes_per_token(MPT_30B, "bfloat16", tp=2) == 48 * 2 * 32 * 112 * 2


def test_shorter_context_fits_more_sequences():
    long = make_plan(Setup(MPT_30B, CATALOG["h100-sxm"], max_model_len=8192))
    short = make_plan(Setup(MPT_30B, CATALOG["h100-sxm"], max_model_len=2048))
    assert short.kv_cache_tokens == long.kv_cache_tokens
    assert short.max_len_sequences == pytest.approx(4 * long.max_len_sequences)


def test_plan_reads_a_checkpoint_config_and_its_quantization(tmp_path, capsys):
    config = mosaicml_config(TinyMpt())
    config["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 128}
    (tmp_path / "config.json").write_text(json.dumps(config))
    code, plan = plan_json(capsys, "--model", str(tmp_path), "--gpu", "l4")
    assert code == 0
    assert (plan["quantization"], plan["dtype"], plan["max_model_len"]) == ("awq", "float16", 512)
    assert plan["kv_bytes_per_token"] == 2 * 2 * 2 * 112 * 2  # 2 layers, K and V, 2 heads of 112


def test_another_gpu_by_its_figures(capsys):
    code, plan = plan_json(
        capsys, "--gpu-memory-gib", "94", "--gpu-bandwidth-tbs", "3.9", "--gpu-capability", "9.0"
    )
    assert code == 0 and plan["gpu_memory_gib"] == 94 and plan["compute_capability"] == "9.0"
    assert plan["decode_tokens_per_s_bound"] == pytest.approx(3.9e12 / (2 * MPT_30B.parameter_count()), rel=1e-3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give --gpu"),
        (("--gpu", "v100"), "unknown GPU 'v100'"),
        (("--gpu", "a10", "--attention-backend", "flashinfer"), "never applies them"),
    ],
)
def test_bad_plan_input_is_one_line_and_exit_2(capsys, args, message):
    assert plan_main(list(args)) == 2
    err = capsys.readouterr().err
    assert message in err and err.strip().count("\n") == 0


def test_plan_refuses_a_non_mpt_checkpoint(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert plan_main(["--model", str(tmp_path), "--gpu", "h100-sxm"]) == 2
    assert "plan sizes MPT checkpoints" in capsys.readouterr().err


def test_cli_dispatches_plan_without_serve_settings(capsys, monkeypatch):
    monkeypatch.setenv("AIROBOROS_PORT", "not-a-port")  # serve would refuse this; plan never reads it
    assert cli_main(["plan", "--gpu", "h200", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["gpu"] == "H200 141GB"


def test_table_lists_the_common_setups(capsys):
    assert plan_main(["--table"]) == 0
    table = capsys.readouterr().out
    assert "| 2 × H100 SXM 80GB | bfloat16 | 27.9 GiB |" in table
    assert table.count("\n") >= 10


# --- the same check at `serve` start on a GPU host ---------------------------------------


def fake_cuda(monkeypatch, name: str, memory_mib: int, capability: tuple[int, int]) -> None:
    import vllm.platforms

    platform = SimpleNamespace(
        is_cuda=lambda: True,
        get_device_name=lambda: name,
        get_device_capability=lambda: SimpleNamespace(major=capability[0], minor=capability[1]),
        get_device_total_memory=lambda: memory_mib * MIB,
    )
    monkeypatch.setattr(vllm.platforms, "current_platform", platform, raising=False)


def mpt_30b_dir(tmp_path):
    config = {**mosaicml_config(TinyMpt()), "d_model": 7168, "n_heads": 64, "n_layers": 48, "max_seq_len": 8192}
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_start_refuses_bf16_mpt_30b_on_one_24_gb_gpu(monkeypatch, tmp_path):
    fake_cuda(monkeypatch, "NVIDIA A10", 23028, (8, 6))
    with pytest.raises(GpuPlanRefused) as refused:
        check_at_start(Settings(dtype="bfloat16"), mpt_30b_dir(tmp_path), current_gpu())
    message = str(refused.value)
    assert message.startswith("MPT on 1 × NVIDIA A10 cannot work: the bfloat16 weights need 55.8 GiB")
    assert "--tensor-parallel-size 4" in message


def test_start_accepts_tensor_parallel_2_on_h100(monkeypatch, tmp_path, caplog):
    fake_cuda(monkeypatch, "NVIDIA H100 80GB HBM3", 81559, (9, 0))
    with caplog.at_level("INFO"):
        check_at_start(Settings(dtype="bfloat16", tensor_parallel_size=2), mpt_30b_dir(tmp_path), current_gpu())
    assert "27.9 GiB of weights per GPU" in caplog.text
