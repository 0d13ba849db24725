"""A soak on the shared default server: a few hundred mixed requests from a bounded load generator.

Streams, non-streaming requests, clients that leave mid-way and bad bodies, 16 at a time. Valid
requests never get a 5xx, nothing hangs, the engine is idle at the end, and the server process's
memory stays flat (measured after a warm-up round, so first-use allocations are not counted).
"""

from __future__ import annotations

import asyncio

import pytest

from harness.load import LoadGenerator, find_engine_core, metric_value, rss_bytes, scrape, wait_for_metric

pytestmark = pytest.mark.engine

REQUESTS = 300
CONCURRENCY = 16
WARMUP_REQUESTS = 64
RSS_MARGIN_MIB = 32
# Waits for the engine and the counters to settle: each ends as soon as its condition holds; the
# bound allows for a CI machine that stalls for tens of seconds.
SETTLE_S = 30


def test_soak_mixed_load_no_5xx_no_hang_engine_idle_memory_flat(default_server, default_model_name):
    base = default_server.base_url
    pid = default_server.process.pid
    generator = LoadGenerator(base, default_model_name, seed=6, timeout=90)
    warmup = asyncio.run(generator.run(WARMUP_REQUESTS, CONCURRENCY))
    assert not warmup.failures and not warmup.hangs, warmup.summary()
    wait_for_metric(base, "vllm:num_requests_running", lambda v: v == 0, timeout=SETTLE_S)
    rss_before = rss_bytes(pid)
    core = find_engine_core(pid)
    core_before = rss_bytes(core.pid)
    aborted_before = metric_value(scrape(base), "airoboros_requests_aborted_total", reason="disconnect")

    report = asyncio.run(generator.run(REQUESTS, CONCURRENCY))

    idle, running, waited = wait_for_metric(base, "vllm:num_requests_running", lambda v: v == 0, timeout=SETTLE_S)
    rss_after = rss_bytes(pid)
    core_after = rss_bytes(core.pid)
    left = sum(count for key, count in report.statuses.items() if key.endswith(":left"))
    _, aborted_total, _ = wait_for_metric(
        base, "airoboros_requests_aborted_total", lambda v: v >= aborted_before + left, timeout=SETTLE_S, reason="disconnect"
    )
    aborted = aborted_total - aborted_before
    in_flight = metric_value(scrape(base), "airoboros_requests_in_flight")
    growth_mib = (rss_after - rss_before) / 2**20
    print(
        f"\nsoak: {report.summary()}\n"
        f"num_requests_running at the end: {running} (after {waited:.2f} s); in flight: {in_flight}; "
        f"clients that left: {left}, aborts counted: {aborted:.0f}\n"
        f"server RSS: before {rss_before / 2**20:.1f} MiB, after {rss_after / 2**20:.1f} MiB, "
        f"growth {growth_mib:+.1f} MiB (margin {RSS_MARGIN_MIB} MiB); engine core RSS: "
        f"{core_before / 2**20:.1f} -> {core_after / 2**20:.1f} MiB"
    )
    assert not report.hangs, report.summary()
    assert not report.failures, report.failures[:20]
    assert not [key for key in report.statuses if key.split(":")[1].startswith("5")], report.summary()
    assert idle, f"{running} engine requests still running after the soak"
    assert in_flight == 0
    # A client can leave just after its answer completed: nothing is left to abort then.
    assert left - 3 <= aborted <= left, f"{aborted} disconnect aborts for {left} clients that left"
    assert growth_mib < RSS_MARGIN_MIB, f"RSS grew {growth_mib:.1f} MiB"
