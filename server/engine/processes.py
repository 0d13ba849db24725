"""The processes vLLM starts for the engine: what they answer to, how they end, and how the
server finds and reaps them, so none acts on a signal meant for the server or outlives it.

What vLLM 0.32 does by itself: `AsyncLLM` spawns the engine core (multiprocessing "spawn": a
fresh interpreter) from the thread that builds it, and the engine core spawns one worker per
rank the same way. The engine core handles SIGTERM and SIGINT by aborting every request and
exiting; a worker raises SystemExit on either. So a stop signal sent to the server's whole
process group (Ctrl-C in a terminal, dumb-init, `kill -TERM -PGID`) or cgroup (systemd's default
`KillMode=control-group`) ended every in-flight request before the server could drain it. Only
a worker watches its parent (a pipe from the engine core); nothing watches the server, so an
engine core whose server was SIGKILLed ran on, holding its memory (and a GPU's).

What this module adds:
- The server builds the engine with SIGTERM and SIGINT blocked in the building thread
  (`start_shielded`). A signal mask survives spawning, so the engine core and its workers, and
  every thread they start, are born with both blocked: a stop signal meant for the server stays
  pending in them, whoever sent it, and vLLM's handlers never see it.
- When the drain is over, the server lets them stop (`allow_stop`): SIGUSR2 to each, whose
  handler drops a SIGTERM still pending (the group's, meant for the server) and unblocks
  SIGTERM; vLLM's own shutdown then sends SIGTERM and its handlers run as usual.
- In each engine process, from the model plugin's entry point (`prepare_engine_process`): the
  kernel kills the process when its parent dies (PR_SET_PDEATHSIG), and once the server has let
  it stop, the process ends right after vLLM's shutdown and the exit handlers
  (`exit_without_teardown`), skipping the interpreter's teardown: its garbage collection over a
  heap of torch and transformers took seconds, long enough for vLLM to give up waiting and
  SIGKILL the worker, leaking its shared memory.
Only processes born with the mask are touched, so `vllm serve` and the benchmark's in-process
engine keep vLLM's own behaviour even though the plugin runs there too.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing import resource_tracker
from pathlib import Path
from types import FrameType
from typing import TypeVar

import psutil

logger = logging.getLogger(__name__)

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
# Sent by the server only, after the drain: "the next SIGTERM is for you".
ALLOW_STOP_SIGNAL = signal.SIGUSR2
# vLLM's names for the processes it spawns (multiprocessing's process name).
ENGINE_PROCESS_PREFIXES = ("EngineCore", "VllmWorker")
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

T = TypeVar("T")


def exit_without_teardown(code: int) -> None:
    """End the process now, after its work and exit handlers are done: flush the logs, skip the
    interpreter's teardown. That teardown collects a heap of torch and transformers (seconds on a
    busy host) and runs vLLM's `AsyncLLM.__del__` with the modules already torn down, which fails
    with a traceback; an `AsyncLLM` cannot be freed earlier, since frames that vLLM's lazy imports
    keep alive hold it."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


# --- in the server --------------------------------------------------------------------------


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Block SIGTERM and SIGINT in this thread (not the process: the event loop's thread still
    gets them); processes spawned meanwhile inherit the mask."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def start_shielded(start: Callable[..., T], *args: object) -> T:
    """`start(*args)` (which spawns the engine's processes) with the stop signals blocked."""
    # The first process spawned launches multiprocessing's resource tracker, and that launch
    # *unblocks* SIGINT and SIGTERM in the calling thread afterwards (it blocks them around its
    # own spawn): launch it first, so the engine's spawn finds the mask as set here.
    resource_tracker.ensure_running()
    with stop_signals_blocked():
        return start(*args)


def engine_processes() -> list[psutil.Process]:
    """The processes vLLM started for the engine (engine core, workers), not multiprocessing's
    resource tracker, which ends by itself once nothing holds its pipe."""
    processes = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "resource_tracker" not in " ".join(child.cmdline()):
                processes.append(child)
    return processes


def _signal_set(pid: int, field: str, thread: int | None = None) -> int | None:
    """A signal bit set from /proc (SigBlk: blocked, SigCgt: caught) of a process or one of its
    threads; None when it cannot be read (gone, or not Linux)."""
    path = f"/proc/{pid}/task/{thread}/status" if thread else f"/proc/{pid}/status"
    try:
        return int(Path(path).read_text().split(f"{field}:")[1].split()[0], 16)
    except (OSError, ValueError, IndexError):
        return None


def _has(bits: int | None, sig: signal.Signals) -> bool | None:
    return None if bits is None else bool(bits & (1 << (sig - 1)))


def unprepared(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Engine processes a stop signal meant for the server would reach (SIGTERM not blocked), or
    that the server could not let stop (no SIGUSR2 handler: the hook did not run there)."""
    return [
        process for process in processes
        if _has(_signal_set(process.pid, "SigBlk"), signal.SIGTERM) is False
        or _has(_signal_set(process.pid, "SigCgt"), ALLOW_STOP_SIGNAL) is False
    ]


def allow_stop(processes: list[psutil.Process], timeout: float = 5.0) -> None:
    """Let the engine's processes act on SIGTERM again, and wait until each has (its main thread
    unblocked SIGTERM), so that vLLM's SIGTERM, sent next, finds them ready for it."""
    waiting = []
    for process in processes:
        # Only to a process that handles it: SIGUSR2's default action is to terminate.
        if _has(_signal_set(process.pid, "SigCgt"), ALLOW_STOP_SIGNAL):
            with contextlib.suppress(psutil.Error):
                # psutil checks the pid still names the process it was (no pid reuse).
                process.send_signal(ALLOW_STOP_SIGNAL)
                waiting.append(process)
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        waiting = [p for p in waiting if _has(_signal_set(p.pid, "SigBlk", thread=p.pid), signal.SIGTERM) and _alive(p)]
        if waiting:
            time.sleep(0.01)
    for process in waiting:
        logger.warning("engine process %d did not take the stop in %.0f s", process.pid, timeout)


def _alive(process: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    return False


def reap(processes: list[psutil.Process], timeout: float = 5) -> None:
    """Kill engine processes still running: one that did not end with the engine (a worker
    whose engine core was killed before it could stop it) would go on holding its memory."""
    alive = [process for process in processes if _alive(process)]
    for process in alive:
        with contextlib.suppress(psutil.Error):
            logger.warning("killing engine process %d (%s), still running", process.pid, process.name())
            process.kill()
    psutil.wait_procs(alive, timeout=timeout)


# --- in the engine's processes --------------------------------------------------------------

_prepared = False
_stop_allowed = False


def is_shielded_engine_process() -> bool:
    """A vLLM engine process spawned by this server (born with the stop signals blocked)."""
    if not multiprocessing.current_process().name.startswith(ENGINE_PROCESS_PREFIXES):
        return False
    return STOP_SIGNALS <= signal.pthread_sigmask(signal.SIG_BLOCK, ())


def prepare_engine_process() -> None:
    """Called in every process vLLM starts (the model plugin's entry point); acts once, and only
    in the engine processes of this server."""
    global _prepared
    if _prepared or not is_shielded_engine_process():
        return
    if threading.current_thread() is not threading.main_thread():
        # vLLM loads plugins on the main thread (engine core and worker start-up); a signal
        # handler can only be set there.
        logger.warning("engine process prepared off the main thread: it stops as vLLM's does")
        return
    _prepared = True
    _die_with_parent()
    signal.signal(ALLOW_STOP_SIGNAL, _accept_stop)
    # Exit handlers run last-registered first: vLLM's (registered as its modules load, after
    # the plugins) run before this one; the few registered earlier, by modules the spawn itself
    # imported (zmq, torch), only prepare for the teardown this skips.
    atexit.register(_end_after_allowed_stop)


def _accept_stop(signum: int, frame: FrameType | None) -> None:
    global _stop_allowed
    _stop_allowed = True
    # A SIGTERM still pending was meant for the server (the server sends vLLM's only after it
    # saw this handler's unblock): drop it, as ignoring a signal discards its pending instance.
    # Delivered now, it would start vLLM's shutdown, which resets SIGTERM to its default action,
    # and vLLM's own SIGTERM would then kill the process mid-way.
    handler = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, handler)
    # This runs in the main thread, the only one that now takes SIGTERM: vLLM's handlers
    # expect it there.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def _end_after_allowed_stop() -> None:
    # Stopped by the server: vLLM's shutdown has run, and no one reads the exit status but
    # vLLM's process manager, which ignores it during a shutdown. Any other exit (a crash) keeps
    # the interpreter's own ending and its status.
    if _stop_allowed:
        exit_without_teardown(0)


def _die_with_parent() -> None:
    """SIGKILL this process when its parent dies, however it died.

    The kernel ties this to the parent *thread* that spawned the process: for the engine core,
    the server's thread that built the engine (a thread of asyncio's default executor, which
    lives until the event loop closes, after the engine is shut down); for a worker, the engine
    core's main thread.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        logger.warning("could not ask to die with the parent process: errno %d", ctypes.get_errno())
        return
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        os.kill(os.getpid(), signal.SIGKILL)  # the parent died before the request took effect
