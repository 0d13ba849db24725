"""Start-up, readiness, drain and engine death: the server's life from first byte to exit.

- Start-up: the HTTP server listens at once (liveness answers), while the model is prepared and
  loaded in a worker thread; a warm-up generation must succeed before readiness turns 200.
- Drain (SIGTERM/SIGINT, driven by `server.ops.runner`): `delist` turns readiness 503 at once
  (requests are still served during `--shutdown-delay`); `begin_drain` then refuses new work and
  starts the drain clock while uvicorn closes its listening socket and waits for in-flight
  connections; requests still running at the deadline are interrupted (a stream gets a final
  error event); the lifespan's end shuts the engine down; exit 0. The engine's processes take
  no part in the signal, whoever sent it (its process group, its cgroup): they hold it until
  the lifespan's end lets them stop (`server.engine.processes`), then vLLM's shutdown runs.
- Engine death: vLLM marks the engine dead when its core process exits; liveness and readiness
  read that flag and turn 503 at once. A watchdog sees it within a second, interrupts whatever
  still waits on the engine with a clear error, gives the answers a moment to go out, kills
  engine processes left running (a backstop: a worker already dies with its engine core), and
  asks the process to exit non-zero so the orchestrator restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

from server.engine import Engine
from server.engine.processes import allow_stop, engine_processes, reap, start_shielded, unprepared
from server.engine.sampling import warmup_params
from server.generation import EnginePrompt, run_generation
from server.generation.loop import DRAIN, ENGINE_DEAD
from server.ops.state import Phase, ServerState

logger = logging.getLogger(__name__)

WATCHDOG_INTERVAL_S = 0.5
# After the engine died: time for in-flight requests' error answers to reach their clients.
ENGINE_DEATH_GRACE_S = 2.0
# vLLM's engine core clears its distributed state and collects garbage over its whole heap
# before it exits: seconds on a busy host, more than the 5 s vLLM gives it by default, past which
# it kills the engine core (leaking its shared memory, logging a traceback).
ENGINE_SHUTDOWN_TIMEOUT_S = 30.0
WARMUP_PROMPT = "Hello"
WARMUP_TIMEOUT_S = 600


def resolve_model_dir(state: ServerState) -> Path:
    settings = state.settings
    if settings.model is not None:
        return settings.model
    from server.engine.default_model import prepare_default_model

    return prepare_default_model(settings.resolved_cache_dir())


class Lifecycle:
    """`engine_started` callbacks run in a thread once the engine is loaded, before the warm-up
    (per-engine preparation such as the chat route's token cache)."""

    def __init__(
        self,
        state: ServerState,
        request_exit: Callable[[int], None] | None = None,
        engine_started: Sequence[Callable[[Engine], None]] = (),
    ) -> None:
        self.state = state
        self.request_exit = request_exit or (lambda code: None)
        self.engine_started = tuple(engine_started)
        self._loader: asyncio.Task | None = None
        self._watchdog: asyncio.Task | None = None
        self._engine_processes: list[psutil.Process] = []
        self._stopped = False

    def _die(self, message: str, error: BaseException | None = None) -> None:
        logger.error(message, exc_info=error)
        self.state.advance(Phase.DEAD)
        self.request_exit(1)

    # --- start-up ------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin loading in the background and return at once, so HTTP can listen."""
        self._loader = asyncio.create_task(self._load())

    async def _load(self) -> None:
        state = self.state
        try:
            model_dir = await asyncio.to_thread(resolve_model_dir, state)
            # Spawned with the stop signals blocked: a signal meant for the server (its process
            # group's or cgroup's) must not stop the engine under the drain.
            engine = await asyncio.to_thread(start_shielded, Engine.start, state.settings, model_dir, state.served_name)
            for prepare in self.engine_started:
                await asyncio.to_thread(prepare, engine)
        except ValueError as error:
            # A configuration the checks refused (an attention backend, a GPU plan, vLLM's own
            # config checks): the operator's to fix, said in one line (details at debug level).
            logger.debug("start-up refused", exc_info=error)
            self._die(f"the model could not be loaded: {error}")
            return
        except Exception as error:  # noqa: BLE001 - a failed start must end the process
            self._die(f"the model could not be loaded: {error}", error)
            return
        state.engine = engine
        self._engine_processes = await asyncio.to_thread(engine_processes)
        for process in unprepared(self._engine_processes):
            logger.warning(
                "engine process %d is not shielded: a stop signal sent to the whole process group or "
                "cgroup may stop it before the drain (send it to the server alone)", process.pid
            )
        if not state.advance(Phase.WARMING):
            return  # stopped while loading: the lifespan's end shuts the engine down
        self._watchdog = asyncio.create_task(self._watch_engine())
        if state.settings.warmup:
            try:
                await self._warm_up(engine)
            except Exception as error:  # noqa: BLE001
                if state.phase is Phase.WARMING:
                    self._die(f"warm-up generation failed: {error}", error)
                return  # otherwise stopped by the shutdown, not a broken engine
        if state.advance(Phase.READY):
            logger.info("ready: serving %s on the model at %s", state.served_name, model_dir)

    async def _warm_up(self, engine: Engine) -> None:
        started = time.monotonic()
        token_ids = engine.tokenize(WARMUP_PROMPT) or [0]
        prompt = EnginePrompt(token_ids, WARMUP_PROMPT, warmup_params())
        deadline = time.monotonic() + WARMUP_TIMEOUT_S
        async for _ in run_generation(engine, prompt, "warmup", deadline=deadline, interruptions=self.state.interruptions):
            pass
        logger.info("warm-up generation took %.2f s", time.monotonic() - started)

    # --- engine death --------------------------------------------------------------------

    async def _watch_engine(self) -> None:
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            engine = self.state.engine
            if engine is not None and engine.dead:
                logger.error("the inference engine died; exiting so the orchestrator restarts this server")
                self.state.advance(Phase.DEAD)
                # Requests still waiting on the engine stop now with the engine's error.
                self.state.interruptions.interrupt_all(ENGINE_DEAD)
                await asyncio.sleep(ENGINE_DEATH_GRACE_S)
                await asyncio.to_thread(reap, self._engine_processes)
                self.request_exit(1)
                return

    # --- drain and stop ------------------------------------------------------------------

    def delist(self) -> None:
        """Readiness 503 from now on; requests are still served (safe in a signal handler)."""
        if not self.state.advance(Phase.DELISTING):
            # Never ready: there is nothing to keep serving.
            self.state.advance(Phase.DRAINING)

    def begin_drain(self) -> None:
        """Refuse new work and start the drain clock: what still runs at the deadline is stopped."""
        state = self.state
        if state.phase is Phase.DRAINING or not state.advance(Phase.DRAINING):
            return
        timeout = state.settings.drain_timeout
        logger.info("draining: %.1f s for in-flight requests", timeout)
        asyncio.get_running_loop().call_later(timeout, state.interruptions.interrupt_all, DRAIN)

    def end_drain_now(self) -> None:
        """The drain's deadline, now: what still runs stops with its error (a second SIGINT)."""
        self.begin_drain()
        self.state.interruptions.interrupt_all(DRAIN)

    async def stop(self) -> None:
        """Shut the engine down (after uvicorn has finished with the connections); once."""
        if self._stopped:
            return
        self._stopped = True
        state = self.state
        state.advance(Phase.STOPPED)
        state.interruptions.interrupt_all(DRAIN)
        if self._loader is not None and not self._loader.done():
            # A thread cannot be interrupted: wait for the load to finish, then shut it down.
            with contextlib.suppress(Exception):
                await self._loader
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        if state.engine is not None:
            logger.info("shutting the engine down")
            # Its processes hold SIGTERM until told the next one is theirs (vLLM's shutdown
            # sends it): see server.engine.processes.
            await asyncio.to_thread(allow_stop, self._engine_processes)
            # Blocking, on the event loop's own thread: there vLLM's shutdown closes its sockets
            # and cancels its output tasks at once and in order. From another thread it only
            # schedules both, and its output handler may first see the closed socket and log an
            # EngineDeadError traceback. Nothing else needs the loop by now.
            state.engine.shutdown(ENGINE_SHUTDOWN_TIMEOUT_S)
        # vLLM's shutdown stops its processes; make sure, so the process exits with no child left.
        await asyncio.to_thread(reap, self._engine_processes)
