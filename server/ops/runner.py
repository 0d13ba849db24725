"""Runs uvicorn with the server's own exit-signal handling (see `server.ops.lifecycle`).

uvicorn on SIGTERM/SIGINT stops listening at once, waits for open connections, and after its
shutdown raises the signal again, so the process dies of it (exit status -15). Here instead:
- readiness turns 503 the moment the signal arrives;
- for `--shutdown-delay` seconds new requests are still accepted and served, so a load balancer
  that polls readiness stops sending before the socket closes (0 when a preStop sleep does this);
- then uvicorn's shutdown runs with the drain clock started: the socket closes, in-flight
  requests get `--drain-timeout` seconds, what is left is stopped with an error, the lifespan
  shuts the engine down;
- the process exits 0, or 1 when the engine died or never started.
A second SIGINT (Ctrl+C twice) still forces an immediate exit, as with plain uvicorn.
SIGUSR1 writes every thread's stack to stderr and changes nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType

import uvicorn
from fastapi import FastAPI

from server.ops.lifecycle import Lifecycle
from server.ops.tls import uvicorn_tls_options
from server.settings import Settings

logger = logging.getLogger(__name__)

# Time after the drain deadline for the final error events to reach their clients, before
# uvicorn cancels what is still running.
FLUSH_GRACE_S = 5.0


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, shutdown_delay: float) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.shutdown_delay = shutdown_delay
        self._exit_signalled = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets=None) -> None:  # noqa: ANN001 - uvicorn's signature
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: flip flags only; everything else runs on the event loop. Unlike
        # uvicorn's, it does not record the signal, so it is not raised again after shutdown.
        if self._exit_signalled:
            if sig == signal.SIGINT:
                self.force_exit = True
            self._call_on_loop(self.stop_serving)
            return
        self._exit_signalled = True
        self.lifecycle.delist()
        self._call_on_loop(self._after_exit_signal)

    def _call_on_loop(self, callback) -> None:  # noqa: ANN001
        if self._loop is None or self._loop.is_closed():
            self.should_exit = True
            return
        self._loop.call_soon_threadsafe(callback)

    def _after_exit_signal(self) -> None:
        if self.shutdown_delay > 0:
            logger.info(
                "exit signal: readiness 503; still serving for %.1f s before the drain", self.shutdown_delay
            )
            asyncio.get_running_loop().call_later(self.shutdown_delay, self.stop_serving)
        else:
            self.stop_serving()

    def stop_serving(self) -> None:
        """Close the listening socket and start the drain clock (idempotent)."""
        self.lifecycle.begin_drain()
        self.should_exit = True


def uvicorn_config(settings: Settings, app: FastAPI) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # Longer than load balancers' idle timeouts (60 s on most), so the balancer, not the
        # server, closes idle connections and never sends on a socket the server just closed.
        timeout_keep_alive=settings.keep_alive_timeout,
        timeout_graceful_shutdown=settings.drain_timeout + FLUSH_GRACE_S,
        access_log=False,  # the server writes its own structured access log
        log_config=None,
        lifespan="on",
        **uvicorn_tls_options(settings),
    )
