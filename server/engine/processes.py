"""The processes vLLM starts for the engine, found and reaped so none outlives the server."""

from __future__ import annotations

import contextlib
import logging

import psutil

logger = logging.getLogger(__name__)


def engine_processes() -> list[psutil.Process]:
    """The processes vLLM started for the engine (engine core, workers), not multiprocessing's
    resource tracker, which ends by itself once nothing holds its pipe."""
    processes = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "resource_tracker" not in " ".join(child.cmdline()):
                processes.append(child)
    return processes


def reap(processes: list[psutil.Process], timeout: float = 5) -> None:
    """Kill engine processes still running: a worker whose engine core was killed lives on,
    orphaned, busy, holding its memory. psutil checks each is the process it was (no pid reuse)."""
    alive = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            logger.warning("killing engine process %d (%s), still running", process.pid, process.name())
            process.kill()
    psutil.wait_procs(alive, timeout=timeout)
