"""Runs uvicorn with the server's signal handling: SIGTERM/SIGINT start a drain, engine death exits non-zero."""

from __future__ import annotations

import asyncio
import logging

import uvicorn

from server.app import create_app
from server.settings import Settings

logger = logging.getLogger(__name__)

# Time after the drain deadline for the final error events to reach their clients.
FLUSH_GRACE_S = 5.0


class DrainingServer(uvicorn.Server):
    """uvicorn, told about exit signals first so readiness turns 503 before anything closes."""

    def __init__(self, config: uvicorn.Config, on_exit_signal) -> None:
        super().__init__(config)
        self._on_exit_signal = on_exit_signal

    def handle_exit(self, sig, frame) -> None:  # noqa: ANN001 - signal handler signature
        self._on_exit_signal()
        super().handle_exit(sig, frame)


def run(settings: Settings) -> int:
    exit_code = {"value": 0}
    server: DrainingServer | None = None

    def request_exit(code: int) -> None:
        exit_code["value"] = max(exit_code["value"], code)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, request_exit=request_exit)
    lifecycle = app.state.lifecycle

    def on_exit_signal() -> None:
        # Runs in the signal handler: flag readiness now, start the drain clock on the loop.
        lifecycle.mark_draining()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.call_soon_threadsafe(lifecycle.begin_drain)

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        timeout_keep_alive=int(settings.keep_alive_timeout),
        timeout_graceful_shutdown=int(settings.drain_timeout + FLUSH_GRACE_S),
        access_log=False,  # the server writes its own structured access log
        log_config=None,
        lifespan="on",
    )
    server = DrainingServer(config, on_exit_signal)
    logger.info("listening on http://%s:%d", settings.host, settings.port)
    server.run()
    state = app.state.server
    if state.phase == "dead":
        exit_code["value"] = max(exit_code["value"], 1)
    logger.info("stopped (exit code %d)", exit_code["value"])
    return exit_code["value"]
