"""The real app, served on a loopback port while it is still loading: no engine ever starts.

uvicorn serves `create_app` with its lifespan off, so the server stays in its `starting` phase:
`/v1/models` answers with the real model card, the API-key middleware answers 401 as it does in
production, and generation routes answer the real 503 "still loading" with `Retry-After`. It
starts in a second, for client tests of exactly these answers (no engine is needed for them).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn
from prometheus_client import CollectorRegistry

from server.app import create_app
from server.metrics import Metrics
from server.settings import Settings
from harness.server import free_port

START_TIMEOUT_S = 20.0


@dataclass
class LoadingServer:
    port: int
    registry: CollectorRegistry

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests_answered(self, route: str, status: int) -> float:
        value = self.registry.get_sample_value("airoboros_requests_total", {"route": route, "status": str(status)})
        return value or 0.0


@contextlib.contextmanager
def loading_server(**settings) -> Iterator[LoadingServer]:
    registry = CollectorRegistry()
    app = create_app(Settings(**settings), metrics=Metrics(registry))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, name="loading-server", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the loading server did not start")
            time.sleep(0.05)
        yield LoadingServer(port, registry)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
