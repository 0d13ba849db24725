"""The admission gate, pure: the bound, the 429 it raises, and the Retry-After it estimates.

(The same gate under a real burst of clients, with health and metrics never throttled, is in
tests/ops/test_front_door.py.)
"""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from server.errors import APIError
from server.metrics import Metrics
from server.ops.admission import MAX_RETRY_AFTER_S, AdmissionGate
from harness.load import metric_value


def gate(limit: int) -> tuple[AdmissionGate, CollectorRegistry]:
    registry = CollectorRegistry()
    return AdmissionGate(limit, Metrics(registry)), registry


def sample(registry: CollectorRegistry, name: str) -> float:
    return metric_value(generate_latest(registry).decode(), name)


def test_exactly_the_bound_is_admitted_and_the_next_gets_a_429():
    admission, registry = gate(2)
    admission.try_enter()
    admission.try_enter()
    with pytest.raises(APIError) as refused:
        admission.try_enter()
    error = refused.value
    assert (error.status, error.type, error.code) == (429, "rate_limit_error", "server_busy")
    assert int(error.headers["Retry-After"]) >= 1
    assert admission.in_flight == 2
    assert sample(registry, "airoboros_requests_in_flight") == 2
    assert sample(registry, "airoboros_requests_rejected_total") == 1


def test_a_slot_that_is_left_is_admitted_again_and_the_count_never_goes_below_zero():
    admission, registry = gate(1)
    admission.try_enter()
    admission.leave(latency_s=0.5)
    admission.try_enter()
    admission.leave()
    admission.leave()  # a second leave (a double clean-up) must not open a phantom slot
    assert admission.in_flight == 0 and sample(registry, "airoboros_requests_in_flight") == 0


def test_retry_after_follows_the_recent_latency_within_one_second_and_a_minute():
    admission, _ = gate(4)
    assert admission.retry_after_seconds() == 1  # empty: at once
    for _ in range(4):
        admission.try_enter()
    for _ in range(30):
        admission.leave(latency_s=20.0)  # requests have been taking 20 s
        admission.try_enter()
    assert 15 <= admission.retry_after_seconds() <= 20  # a full queue turns over in about that
    for _ in range(60):
        admission.leave(latency_s=10_000.0)
        admission.try_enter()
    assert admission.retry_after_seconds() == MAX_RETRY_AFTER_S
