"""The server's Prometheus series (http-api.md, "Metrics").

In production they live in prometheus_client's default registry beside vLLM's own `vllm:*`
series, which vLLM's stat loggers update in this process, so one `/metrics` page shows both. An
app built with its own registry (tests) serves that registry alone.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)
_STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
_TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)


class Metrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        prefix = "airoboros"
        self.requests = Counter(
            f"{prefix}_requests", "Finished HTTP requests.", ["route", "status"], registry=registry
        )
        self.finish_reasons = Counter(
            f"{prefix}_finish_reasons", "Finished choices by finish reason.", ["route", "finish_reason"],
            registry=registry,
        )
        self.stop_reasons = Counter(
            f"{prefix}_stop_reasons",
            "What stopped each choice: eos, a format stop string (</s>, USER:), client_stop, length, abort.",
            ["reason"], registry=registry,
        )
        self.request_latency = Histogram(
            f"{prefix}_request_latency_seconds", "End-to-end request latency.", ["route"],
            buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self.time_to_first_token = Histogram(
            f"{prefix}_time_to_first_token_seconds", "Time from arrival to the first token.", ["route"],
            buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self.time_per_output_token = Histogram(
            f"{prefix}_time_per_output_token_seconds", "Mean time between output tokens of a request.",
            ["route"], buckets=_TOKEN_LATENCY_BUCKETS, registry=registry,
        )
        self.prompt_tokens = Counter(
            f"{prefix}_prompt_tokens", "Prompt tokens of finished requests.", ["route"], registry=registry
        )
        self.cached_prompt_tokens = Counter(
            f"{prefix}_cached_prompt_tokens",
            "Prompt tokens of finished requests found in the engine's prefix cache (not computed again).",
            ["route"], registry=registry,
        )
        self.completion_tokens = Counter(
            f"{prefix}_completion_tokens", "Generated tokens of finished requests.", ["route"],
            registry=registry,
        )
        self.in_flight = Gauge(
            f"{prefix}_requests_in_flight", "Generation requests admitted and not finished.",
            registry=registry,
        )
        self.rejected = Counter(
            f"{prefix}_requests_rejected", "Requests refused by admission control (429).", registry=registry
        )
        self.aborted = Counter(
            f"{prefix}_requests_aborted", "Engine requests aborted before finishing.", ["reason"],
            registry=registry,
        )
        self.tool_calls = Counter(
            f"{prefix}_tool_calls", "Tool calls answered, by the request's tool_choice (auto, required, named).",
            ["tool_choice"], registry=registry,
        )
        self.history_dropped = Counter(
            f"{prefix}_history_messages_dropped", "Chat messages dropped by the history policy.",
            registry=registry,
        )
        self.stored_responses = Gauge(
            f"{prefix}_responses_stored", "Responses in the responses store (as of this replica's last call).",
            registry=registry,
        )
        self.stored_bytes = Gauge(
            f"{prefix}_responses_stored_bytes", "Bytes of the stored responses' JSON.", registry=registry
        )
        self.store_evictions = Counter(
            f"{prefix}_responses_evicted",
            "Stored responses removed by this replica: size (the byte bound, oldest first) or expired.",
            ["reason"], registry=registry,
        )
        self.store_seconds = Histogram(
            f"{prefix}_responses_store_seconds", "Time of one call to the responses store, by operation.",
            ["operation"], buckets=_STORE_BUCKETS, registry=registry,
        )
        self.background_responses = Counter(
            f"{prefix}_background_responses",
            "Background responses this replica ran, by how they ended: completed, incomplete, failed, cancelled.",
            ["status"], registry=registry,
        )
