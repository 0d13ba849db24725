"""Admission control: at most N requests generating or waiting; beyond that, 429 at once.

Refusing early is kinder than queueing without bound: the client (or the load balancer) can
retry elsewhere, and the requests already admitted keep their latency. `Retry-After` estimates
when a slot frees up from the recent mean request latency and how full the queue is; it is at
least 1 s (OpenAI SDKs honour it) and at most a minute (one slow request must not park clients).
Health and metrics never pass through here.
"""

from __future__ import annotations

import math

from server.errors import APIError
from server.metrics import Metrics

MAX_RETRY_AFTER_S = 60


class AdmissionGate:
    def __init__(self, limit: int, metrics: Metrics) -> None:
        self.limit = limit
        self.metrics = metrics
        self.in_flight = 0
        self._mean_latency_s = 1.0

    def retry_after_seconds(self) -> int:
        # A full queue turns over in about one mean request latency; scale by how full it is.
        estimate = math.ceil(self._mean_latency_s * self.in_flight / max(self.limit, 1))
        return min(MAX_RETRY_AFTER_S, max(1, estimate))

    def try_enter(self) -> None:
        """Take a slot, or raise the 429 (counted in the rejected metric)."""
        if self.in_flight >= self.limit:
            self.metrics.rejected.inc()
            raise APIError(
                429,
                f"The server is at capacity ({self.limit} requests in flight); retry shortly.",
                type="rate_limit_error", code="server_busy",
                headers={"Retry-After": str(self.retry_after_seconds())},
            )
        self.in_flight += 1
        self.metrics.in_flight.set(self.in_flight)

    def leave(self, latency_s: float | None = None) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        self.metrics.in_flight.set(self.in_flight)
        if latency_s is not None:
            self._mean_latency_s = 0.8 * self._mean_latency_s + 0.2 * latency_s
