"""`server.engine.processes` on stand-ins for vLLM's engine processes (tests/support/
engine_process.py: spawned as vLLM spawns them, with vLLM's kind of SIGTERM handler, no model):
they are born holding SIGTERM and SIGINT, a stop signal meant for the server leaves them running,
they stop when the server lets them (the SIGTERM that was pending meanwhile dropped, the one sent
after acted on), and they die with their parent. The real engine is in tests/ops/drain/test_process_group_signals.py.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from server.engine.processes import allow_stop, is_shielded_engine_process, unprepared
from tests.support.engine_process import server_with_engine_core, spawn_engine_core

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux's /proc")


def test_an_engine_process_is_born_holding_the_stop_signals_and_stops_only_when_allowed():
    engine, _ = spawn_engine_core()
    handle = psutil.Process(engine.pid)
    try:
        assert unprepared([handle]) == []
        # What a terminal's Ctrl-C, dumb-init or systemd's control-group kill deliver to it.
        os.kill(engine.pid, signal.SIGTERM)
        os.kill(engine.pid, signal.SIGINT)
        engine.join(timeout=1.0)
        assert engine.exitcode is None, "the stop signal meant for the server stopped the engine process"
        allow_stop([handle])
        # The pending SIGTERM (the group's) was dropped: still running.
        engine.join(timeout=1.0)
        assert engine.exitcode is None, "the pending group SIGTERM acted once the stop was allowed"
        assert unprepared([handle]) == [handle]  # SIGTERM no longer blocked
        os.kill(engine.pid, signal.SIGTERM)  # vLLM's shutdown
        engine.join(timeout=30)
        # Its handler ran (SystemExit), then the process ended past the interpreter's teardown
        # with status 0 (see exit_without_teardown).
        assert engine.exitcode == 0
    finally:
        if engine.is_alive():
            engine.kill()
            engine.join(timeout=10)


def test_an_engine_process_dies_with_its_parent_however_it_died():
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    server = context.Process(target=server_with_engine_core, args=(sender,), name="server-stand-in")
    server.start()
    sender.close()
    alive: list[psutil.Process] = []
    try:
        assert receiver.poll(90), "the stand-in server did not report its engine process"
        engine = psutil.Process(receiver.recv())
        assert engine.ppid() == server.pid
        server.kill()
        _, alive = psutil.wait_procs([engine], timeout=10)
        assert not alive, "the engine process outlived its SIGKILLed parent"
    finally:
        server.kill()
        server.join(timeout=10)
        for process in alive:
            process.kill()


def test_outside_an_engine_process_the_hook_does_nothing():
    # This (test) process is neither named as vLLM names its processes nor born shielded.
    assert not is_shielded_engine_process()
    assert signal.getsignal(signal.SIGUSR2) in (signal.SIG_DFL, None)


def test_the_server_never_sends_its_stop_permission_to_a_process_without_the_hook():
    # SIGUSR2 would terminate a process that does not handle it (a forked child, where the
    # plugin's entry point never runs): allow_stop leaves such a process alone.
    plain = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.5)
        handle = psutil.Process(plain.pid)
        assert unprepared([handle]) == [handle]
        allow_stop([handle], timeout=1.0)
        time.sleep(0.5)
        assert plain.poll() is None, f"ended with {plain.returncode}"
    finally:
        plain.kill()
        plain.wait(timeout=10)
