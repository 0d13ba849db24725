"""The load this replica reports to a router: vLLM's series, with our admission gate counted in.

The inference gateway's endpoint picker scores replicas by `vllm:num_requests_waiting` and
`vllm:kv_cache_usage_perc`, read from `/metrics` or from the ORCA `endpoint-load-metrics`
response header. vLLM's own waiting count only sees the engine's scheduler queue, but a request
our admission gate (ops/admission.py) has let in and the engine is not yet running (still being
handed over, or queued) is waiting just the same; so the waiting count we report is
`max(engine waiting, admitted − engine running)`. vLLM's stat loggers write these gauges into
prometheus_client's registry in this process (metrics.py); they are read back from it, so this
module needs no vLLM import.

The header follows vLLM 0.32 (`vllm/entrypoints/serve/utils/orca_metrics.py`): sent only when
the request names a format in `endpoint-load-metrics-format`, `TEXT` or `JSON` (any case):
`TEXT named_metrics.kv_cache_usage_perc=0.1, named_metrics.num_requests_waiting=2.0` or
`JSON {"named_metrics": {"kv_cache_usage_perc": 0.1, "num_requests_waiting": 2.0}}`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Protocol

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"
FORMAT_HEADER = "endpoint-load-metrics-format"
LOAD_HEADER = "endpoint-load-metrics"
# vLLM's ORCA names for the series it reports, in the order it reports them.
ORCA_NAMES = {KV_CACHE_USAGE: "kv_cache_usage_perc", WAITING: "num_requests_waiting"}


class Admitted(Protocol):
    in_flight: int


def _family_total(families: dict[str, Metric], name: str) -> float:
    family = families.get(name)
    return sum(sample.value for sample in family.samples if sample.name == name) if family else 0.0


def _families(registry: Collector) -> dict[str, Metric]:
    # As vLLM's own header does (`get_metrics_snapshot`), the whole registry, only when asked.
    return {family.name: family for family in registry.collect()}


def gate_waiting(families: dict[str, Metric], gate: Admitted) -> float:
    """Requests admitted by our gate that neither run nor wait in the engine's scheduler."""
    engine_busy = _family_total(families, RUNNING) + _family_total(families, WAITING)
    return max(0.0, gate.in_flight - engine_busy)


def _with_gate_waiting(family: Metric, extra: float) -> Metric:
    """The waiting family with `extra` added to its first (in practice only) engine's sample."""
    copy = Metric(family.name, family.documentation, family.type, family.unit)
    for position, sample in enumerate(family.samples):
        copy.samples.append(sample._replace(value=sample.value + extra) if position == 0 else sample)
    return copy


class GateAwareRegistry:
    """`registry` for `generate_latest`, with the gate's waiting requests in vLLM's waiting series."""

    def __init__(self, registry: Collector, gate: Admitted) -> None:
        self.registry = registry
        self.gate = gate

    def collect(self) -> Iterator[Metric]:
        families = _families(self.registry)
        extra = gate_waiting(families, self.gate)
        for family in families.values():
            yield _with_gate_waiting(family, extra) if family.name == WAITING and family.samples else family


def named_metrics(registry: Collector, gate: Admitted) -> list[tuple[str, float]]:
    """The ORCA report's metrics: vLLM's, waiting counted as `/metrics` counts it."""
    families = _families(registry)
    report = []
    for series, orca_name in ORCA_NAMES.items():
        if series == WAITING:
            report.append((orca_name, _family_total(families, WAITING) + gate_waiting(families, gate)))
        elif series in families:
            report.append((orca_name, _family_total(families, series)))
    return report


def orca_header(metrics_format: str | None, registry: Collector, gate: Admitted) -> dict[str, str]:
    """The `endpoint-load-metrics` header the request asked for; nothing when it asked for none
    or for a format vLLM does not write."""
    kind = (metrics_format or "").strip().lower()
    if kind not in ("text", "json"):
        return {}
    report = named_metrics(registry, gate)
    if kind == "text":
        return {LOAD_HEADER: "TEXT " + ", ".join(f"named_metrics.{name}={value}" for name, value in report)}
    return {LOAD_HEADER: "JSON " + json.dumps({"named_metrics": dict(report)})}
