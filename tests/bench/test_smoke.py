"""The benchmark harness (bench/) runs end to end against a real server and reports every figure.

A few seconds at concurrency 2 against the shared default server; no timing assertions, only
that each figure is there and sane. The full comparison with `vllm serve` is `make bench`.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness.server import REPO_ROOT

pytestmark = pytest.mark.engine

MAX_TOKENS = 16
REQUESTS = 4
POSITIVE = (
    "output_tokens_per_s", "requests_per_s", "ttft_ms_p50", "ttft_ms_p95", "itl_ms_p50", "itl_ms_p95",
    "tpot_ms_p50", "tpot_ms_p95", "e2e_s_p50", "e2e_s_p95", "wall_s",
    "frontend_cpu_s_per_1k_tokens", "frontend_cpu_ms_per_stream_s", "stream_s", "engine_cpu_s_per_1k_tokens", "frontend_peak_rss_mb", "frontend_vm_hwm_mb",
)
# The front end (the process that listens) holds neither the weights nor the KV cache: vLLM's
# engine core, its child process, does. What it holds is Python, torch, vLLM's client side, the
# tokenizer and the HTTP layers: 691 MiB at 64 streams in docs/performance.md's bench run, 771 MiB
# in this test when the bound was set. The bound leaves about twice that, and still fails if the engine
# ran in this process (the test server's 1 GiB KV cache alone, plus the weights, on top).
FRONTEND_RSS_BOUND_MB = 1536


@pytest.fixture(scope="module")
def bench_report(default_server, tmp_path_factory):
    sys.path.insert(0, str(REPO_ROOT))
    from bench.models import default_model_dir

    out = tmp_path_factory.mktemp("bench")
    command = [
        sys.executable, "-m", "bench", "--url", default_server.base_url,
        "--frontend-pid", str(default_server.process.pid), "--model-dir", str(default_model_dir()),
        "--levels", "2", "--rounds", "1", "--max-tokens", str(MAX_TOKENS),
        "--min-requests", str(REQUESTS), "--bandwidth-mib", "64", "--out", str(out),
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, json.loads((out / "report.json").read_text())


def test_bench_report_has_every_figure_for_our_server(bench_report):
    _, report = bench_report
    (entry,) = report["models"]
    (level,) = entry["levels"]
    assert level["concurrency"] == 2
    ours = level["ours"]
    assert ours["requests_ok"] == REQUESTS and ours["requests_failed"] == 0
    assert ours["output_tokens"] == REQUESTS * MAX_TOKENS and ours["short_responses"] == 0
    for key in POSITIVE:
        assert ours[key] is not None and ours[key] > 0, key
    for metric in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_s"):
        assert ours[f"{metric}_p95"] >= ours[f"{metric}_p50"], metric
    assert ours["e2e_s_p50"] * 1000 >= ours["ttft_ms_p50"]
    assert ours["frontend_peak_rss_mb"] < FRONTEND_RSS_BOUND_MB, ours["frontend_peak_rss_mb"]
    # Stream-seconds are the requests' open times summed: at least each one's median, at most
    # all of them open for the whole run.
    assert REQUESTS * ours["e2e_s_p50"] * 0.5 <= ours["stream_s"] <= REQUESTS * ours["wall_s"]


def test_bench_roofline_is_computed_from_the_checkpoint(bench_report):
    _, report = bench_report
    roof = report["models"][0]["roofline"]
    assert roof["memory_bandwidth_gbs"] > 0
    # SmolLM2-135M: about 135 M parameters, 2 bytes each in bfloat16.
    assert 100e6 < roof["parameters"] < 200e6
    assert roof["bytes_per_token"] == 2 * roof["parameters"]
    assert roof["batch1_bound_tokens_per_s"] > 0
    assert 0 < roof["batch1_fraction_of_bound"]
    assert 0 < roof["batch1_decode_fraction_of_bound"]


def test_bench_writes_markdown_and_plot(bench_report):
    out, report = bench_report
    markdown = (out / "report.md").read_text()
    assert "| c | server | output tok/s |" in markdown
    assert "Batch-1 roofline" in markdown
    assert report["meta"]["mode"] == "existing server"
    # matplotlib is in the test extra: the plot is always drawn, and is a PNG.
    assert (out / "throughput_ttft.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
