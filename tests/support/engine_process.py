"""Stand-ins for vLLM's engine processes, for tests of `server.engine.processes` alone: spawned
the way vLLM spawns them (multiprocessing "spawn", named as vLLM names them), they call the
plugin's hook and then wait, as an idle engine core does. No vLLM, no model."""

from __future__ import annotations

import multiprocessing
import signal
import sys
import time
from multiprocessing.connection import Connection

from server.engine.processes import prepare_engine_process, start_shielded

ENGINE_CORE_NAME = "EngineCore"
LIFETIME_S = 120  # bounded: a stand-in nobody stops still ends


def idle_engine_core(ready: Connection) -> None:
    """vLLM's engine core, as far as signals go: its SIGTERM handler ends the process."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))
    prepare_engine_process()
    ready.send("ready")
    deadline = time.monotonic() + LIFETIME_S
    while time.monotonic() < deadline:
        time.sleep(0.05)


def spawn_engine_core() -> tuple[multiprocessing.Process, Connection]:
    """An idle engine core spawned from this thread with the server's shield, once it is ready."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=idle_engine_core, args=(sender,), name=ENGINE_CORE_NAME)
    start_shielded(process.start)
    sender.close()
    if not receiver.poll(60):
        process.kill()
        raise TimeoutError("the stand-in engine core did not start")
    receiver.recv()
    return process, receiver


def server_with_engine_core(report: Connection) -> None:
    """A server stand-in: spawns an engine core, reports its pid, waits to be killed."""
    process, _ = spawn_engine_core()
    report.send(process.pid)
    deadline = time.monotonic() + LIFETIME_S
    while time.monotonic() < deadline:
        time.sleep(0.05)
