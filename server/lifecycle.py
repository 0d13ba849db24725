"""Start-up, readiness, drain and engine death: the server's life from first byte to exit.

- Start-up: the HTTP server listens at once (liveness answers), while the model is prepared and
  loaded in a worker thread; a warm-up generation must succeed before readiness turns 200.
- Drain (SIGTERM/SIGINT, driven by `server.runner`): `mark_draining` turns readiness 503 at once
  (requests are still served during `--shutdown-delay`); `begin_drain` then refuses new work and
  starts the drain clock while uvicorn closes its listening socket and waits for in-flight
  connections; requests still running at the deadline are stopped with an error (a stream gets
  a final error event and `[DONE]`); the lifespan's end shuts the engine down; exit 0.
- Engine death: vLLM marks the engine dead when its core process exits; liveness and readiness
  read that flag and turn 503 at once. A watchdog sees it within a second, stops whatever is
  still waiting on the engine with a clear error, gives the answers a moment to go out, kills
  engine processes left running (a worker outlives a killed engine core), and asks the process
  to exit non-zero so the orchestrator restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from prompt_formats import get_format

from server.admission import AdmissionGate
from server.chat import ChatService
from server.completions import CompletionService
from server.engine import Engine
from server.generation import run_generation
from server.state import ServerState

logger = logging.getLogger(__name__)

WATCHDOG_INTERVAL_S = 0.5
# After the engine died: time for in-flight requests' error answers to reach their clients.
ENGINE_DEATH_GRACE_S = 2.0
WARMUP_PROMPT = "Hello"


def resolve_model_dir(state: ServerState) -> Path:
    settings = state.settings
    if settings.model is not None:
        return settings.model
    from server.default_model import prepare_default_model

    return prepare_default_model(settings.resolved_cache_dir())


def engine_processes() -> list:
    """The processes vLLM started for the engine (engine core, workers), not multiprocessing's
    resource tracker, which ends by itself once nothing holds its pipe."""
    import psutil  # a vLLM dependency

    processes = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "resource_tracker" not in " ".join(child.cmdline()):
                processes.append(child)
        except psutil.Error:
            pass
    return processes


def reap(processes: list) -> None:
    """Kill engine processes still running: a worker whose engine core was killed lives on,
    orphaned, busy, holding its memory. psutil checks each is the process it was (no pid reuse)."""
    import psutil

    alive = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            logger.warning("killing engine process %d (%s), still running", process.pid, process.name())
            process.kill()
    psutil.wait_procs(alive, timeout=5)


class Lifecycle:
    def __init__(self, state: ServerState, request_exit: Callable[[int], None] | None = None) -> None:
        self.state = state
        self.request_exit = request_exit or (lambda code: None)
        self._loader: asyncio.Task | None = None
        self._watchdog: asyncio.Task | None = None
        self._engine_processes: list = []
        self._stopping = False

    # --- start-up ------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin loading in the background and return at once, so HTTP can listen."""
        self._loader = asyncio.create_task(self._load())

    async def _load(self) -> None:
        state = self.state
        try:
            model_dir = await asyncio.to_thread(resolve_model_dir, state)
            engine = await asyncio.to_thread(Engine.start, state.settings, model_dir, state.served_name)
        except Exception as error:  # noqa: BLE001 - a failed start must end the process
            logger.error("the model could not be loaded: %s", error, exc_info=error)
            state.startup_error = str(error)
            state.phase = "dead"
            self.request_exit(1)
            return
        if self._stopping:
            engine.shutdown()
            return
        self._engine_processes = await asyncio.to_thread(engine_processes)
        state.engine = engine
        state.chat = ChatService(engine, state.settings, get_format(state.settings.prompt_format))
        state.completions = CompletionService(engine, state.settings)
        state.admission = AdmissionGate(state.settings.max_inflight, state.metrics)
        self._watchdog = asyncio.create_task(self._watch_engine())
        if state.settings.warmup:
            try:
                await self._warm_up(engine)
            except Exception as error:  # noqa: BLE001
                if self._stopping:
                    return  # stopped by the shutdown, not a broken engine
                logger.error("warm-up generation failed: %s", error, exc_info=error)
                state.phase = "dead"
                self.request_exit(1)
                return
        state.warmed = True
        if state.phase == "starting":
            state.phase = "ready"
            logger.info("ready: serving %s on the model at %s", state.served_name, model_dir)

    async def _warm_up(self, engine: Engine) -> None:
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        started = time.monotonic()
        params = SamplingParams(max_tokens=2, temperature=0.0, output_kind=RequestOutputKind.FINAL_ONLY)
        token_ids = engine.tokenize(WARMUP_PROMPT) or [0]
        async for _ in run_generation(
            engine, token_ids, WARMUP_PROMPT, params, "warmup", tick_seconds=None,
            deadline=time.monotonic() + 600,
        ):
            pass
        logger.info("warm-up generation took %.2f s", time.monotonic() - started)

    # --- engine death --------------------------------------------------------------------

    async def _watch_engine(self) -> None:
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            engine = self.state.engine
            if engine is not None and engine.dead:
                logger.error("the inference engine died; exiting so the orchestrator restarts this server")
                self.state.phase = "dead"
                # Requests still waiting on the engine stop now with the engine's error.
                self.state.drain_expired.set()
                await asyncio.sleep(ENGINE_DEATH_GRACE_S)
                await asyncio.to_thread(reap, self._engine_processes)
                self.request_exit(1)
                return

    # --- drain and stop ------------------------------------------------------------------

    def mark_draining(self) -> None:
        """Readiness 503 from now on; requests are still served (safe in a signal handler)."""
        if self.state.phase != "dead":
            self.state.phase = "draining"

    def begin_drain(self) -> None:
        """Refuse new work and start the drain clock: what still runs at the deadline is stopped."""
        state = self.state
        self.mark_draining()
        if state.drain_started:
            return
        state.drain_started = True
        timeout = state.settings.drain_timeout
        logger.info("draining: %.1f s for in-flight requests", timeout)
        asyncio.get_running_loop().call_later(timeout, state.drain_expired.set)

    async def stop(self) -> None:
        """Shut the engine down (after uvicorn has finished with the connections)."""
        self._stopping = True
        self.state.drain_expired.set()
        if self._loader is not None and not self._loader.done():
            # A thread cannot be interrupted: wait for the load to finish, then shut it down.
            with contextlib.suppress(Exception):
                await self._loader
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        if self.state.engine is not None:
            logger.info("shutting the engine down")
            await asyncio.to_thread(self.state.engine.shutdown)
            self.state.engine = self.state.chat = self.state.completions = None
        # vLLM's shutdown stops its processes; make sure, so the process exits with no child left.
        await asyncio.to_thread(reap, self._engine_processes)
