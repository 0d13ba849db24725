"""ops/load_report.py, as pure code: the waiting count a router reads includes our admission gate's
requests, in `/metrics` and in vLLM's ORCA header formats. (The same on a real server with a full
gate: tests/gateway/test_backend.py.)"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from server.ops.load_report import GateAwareRegistry, orca_header


@dataclass
class Gate:
    in_flight: int


def vllm_gauges(waiting: float, running: float, kv_usage: float = 0.25) -> CollectorRegistry:
    """The three gauges as vLLM's stat logger registers them (one engine, labelled)."""
    registry = CollectorRegistry()
    labels = {"model_name": "m", "engine": "0"}
    for name, value in (
        ("vllm:num_requests_waiting", waiting), ("vllm:num_requests_running", running),
        ("vllm:kv_cache_usage_perc", kv_usage),
    ):
        Gauge(name, name, list(labels), registry=registry).labels(**labels).set(value)
    return registry


def waiting_on_the_page(registry: CollectorRegistry, gate: Gate) -> float:
    page = generate_latest(GateAwareRegistry(registry, gate)).decode()
    (line,) = [line for line in page.splitlines() if line.startswith("vllm:num_requests_waiting{")]
    return float(line.rsplit(" ", 1)[1])


@pytest.mark.parametrize(
    ("engine_waiting", "engine_running", "admitted", "reported"),
    [
        (0, 0, 0, 0),  # idle
        (0, 1, 3, 2),  # two admitted requests not yet in the engine's stats: waiting
        (2, 1, 3, 2),  # the engine already queues them: counted once, not twice
        (0, 4, 4, 0),  # all admitted requests run
        (1, 0, 0, 1),  # the engine's own count is never lowered
    ],
)
def test_waiting_is_the_engines_or_the_admitted_not_running(engine_waiting, engine_running, admitted, reported):
    registry = vllm_gauges(engine_waiting, engine_running)
    assert waiting_on_the_page(registry, Gate(admitted)) == reported
    # The other series pass through untouched.
    page = generate_latest(GateAwareRegistry(registry, Gate(admitted))).decode()
    assert f'vllm:num_requests_running{{engine="0",model_name="m"}} {float(engine_running)}' in page


def test_orca_text_and_json_are_vllms_formats():
    registry, gate = vllm_gauges(0, 1, kv_usage=0.5), Gate(3)
    assert orca_header("TEXT", registry, gate) == {
        "endpoint-load-metrics": "TEXT named_metrics.kv_cache_usage_perc=0.5, named_metrics.num_requests_waiting=2.0"
    }
    header = orca_header("json", registry, gate)["endpoint-load-metrics"]
    assert header.startswith("JSON ")
    assert json.loads(header[len("JSON "):]) == {"named_metrics": {"kv_cache_usage_perc": 0.5, "num_requests_waiting": 2.0}}


@pytest.mark.parametrize("metrics_format", [None, "", "XML", "binary"])
def test_no_orca_header_unless_a_known_format_is_asked(metrics_format):
    assert orca_header(metrics_format, vllm_gauges(0, 0), Gate(0)) == {}
