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
It makes no difference whether the signal reached the server alone (Kubernetes, `docker stop`,
systemd's `KillMode=mixed`) or its whole process group or cgroup (Ctrl-C, dumb-init, systemd's
default `KillMode=control-group`): the engine's processes hold such signals until the server
shuts them down (`server.engine.processes`).
A second SIGINT (Ctrl+C twice) means "stop now": what still runs ends at once with its error
event, the server waits at most `FORCED_FLUSH_S` for those to go out, shuts the engine down and
exits 130 (128 + SIGINT, as a shell reports an interrupted command). A second SIGTERM changes
nothing: orchestrators send one and then, at their own deadline, SIGKILL.
SIGUSR1 writes every thread's stack to stderr and changes nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from types import FrameType

import uvicorn
from fastapi import FastAPI

from server.ops.connections import ConnectionLimits, bounded_http_protocol
from server.ops.lifecycle import Lifecycle
from server.ops.tls import uvicorn_tls_options
from server.settings import Settings

logger = logging.getLogger(__name__)

# Time after the drain deadline for the final error events to reach their clients, before
# uvicorn cancels what is still running.
FLUSH_GRACE_S = 5.0
# After a second SIGINT: time for the error events to go out before connections are dropped.
FORCED_FLUSH_S = 1.0
FORCED_EXIT_CODE = 128 + signal.SIGINT


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, shutdown_delay: float) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.shutdown_delay = shutdown_delay
        self.forced = False
        self._exit_signalled = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        if self.force_exit:
            # A forced exit skips the lifespan's end, which shuts the engine down: do it here
            # (a no-op when the lifespan got to it first).
            await self.lifecycle.stop()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: flip flags only; everything else runs on the event loop. Unlike
        # uvicorn's, it does not record the signal, so it is not raised again after shutdown.
        if self._exit_signalled:
            self._call_on_loop(self.stop_now if sig == signal.SIGINT else self.stop_serving)
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

    def stop_now(self) -> None:
        """End the drain at once: in-flight requests stop with their error, and connections are
        dropped `FORCED_FLUSH_S` later if they have not closed by then (idempotent)."""
        if self.forced:
            return
        self.forced = True
        logger.warning("second SIGINT: stopping in-flight requests now")
        self.stop_serving()
        self.lifecycle.end_drain_now()
        asyncio.get_running_loop().call_later(FORCED_FLUSH_S, self._force_exit)

    def _force_exit(self) -> None:
        self.force_exit = True


def uvicorn_config(settings: Settings, app: FastAPI) -> uvicorn.Config:
    limits = ConnectionLimits(
        header_timeout=settings.header_timeout,
        body_timeout=settings.body_timeout,
        max_header_bytes=settings.max_header_bytes,
    )
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=bounded_http_protocol(limits),
        limit_concurrency=settings.max_connections,
        # Longer than load balancers' idle timeouts (60 s on most), so the balancer, not the
        # server, closes idle connections and never sends on a socket the server just closed.
        timeout_keep_alive=settings.keep_alive_timeout,
        timeout_graceful_shutdown=settings.drain_timeout + FLUSH_GRACE_S,
        access_log=False,  # the server writes its own structured access log
        log_config=None,
        lifespan="on",
        **uvicorn_tls_options(settings),
    )
