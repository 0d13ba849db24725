"""Admission control: at most N requests generating or waiting; beyond that, 429 at once.

Refusing early is kinder than queueing without bound: the client (or the load balancer) can
retry elsewhere, and the requests already admitted keep their latency. `Retry-After` estimates
when a slot frees up from the recent mean request latency and how full the queue is.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

from server.errors import APIError
from server.metrics import Metrics


class AdmissionGate:
    def __init__(self, limit: int, metrics: Metrics) -> None:
        self.limit = limit
        self.metrics = metrics
        self.in_flight = 0
        self._mean_latency_s = 1.0

    def retry_after_seconds(self) -> int:
        # With every slot busy, about one slot frees per (mean latency / limit) seconds.
        return max(1, math.ceil(self._mean_latency_s * self.in_flight / max(self.limit, 1)))

    def try_enter(self, weight: int = 1) -> None:
        if self.in_flight + weight > self.limit:
            self.metrics.rejected.inc()
            raise APIError(
                429,
                f"The server is at capacity ({self.limit} requests in flight); retry shortly.",
                type="rate_limit_error", code="server_busy",
                headers={"Retry-After": str(self.retry_after_seconds())},
            )
        self.in_flight += weight
        self.metrics.in_flight.set(self.in_flight)

    def leave(self, weight: int = 1, latency_s: float | None = None) -> None:
        self.in_flight = max(0, self.in_flight - weight)
        self.metrics.in_flight.set(self.in_flight)
        if latency_s is not None:
            self._mean_latency_s = 0.8 * self._mean_latency_s + 0.2 * latency_s

    @contextmanager
    def slot(self, weight: int = 1) -> Iterator[None]:
        self.try_enter(weight)
        try:
            yield
        finally:
            self.leave(weight)
