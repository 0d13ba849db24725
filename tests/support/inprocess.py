"""The whole server on a fake engine, in this process: uvicorn in a thread on a loopback port.

`serving_fake(...)` builds the app exactly as `airoboros-server serve` does (`create_app`, the
same `DrainingServer` and uvicorn configuration, the real lifecycle: load in a thread, warm-up
generation, readiness, drain, stop) and only the engine is the fake
(`harness/fake_engine.py`): while the server lives, vLLM's `AsyncLLM.from_engine_args`
hands out the fake for its (empty) checkpoint directory, and the fake has no engine processes
to find or reap (`fake_engines`; `tests/support/fake_serve.py` uses the same in a process). Clients talk to it over a
real socket, so streaming, disconnects and keep-alive behave as on the wire. A start costs a
fraction of a second; nothing is left running when the block ends (bounded waits throughout).

The signal handlers are the main thread's business, so `InProcessServer.send_signal` calls the
server's handler directly, as the signal would.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from harness.fake_engine import FakeAsyncLLM, fake_checkpoint
from harness.server import ServerEndpoints

FAKE_MODEL = "fake-model"
START_TIMEOUT_S = 30.0
LOGGERS = ("server", "airoboros", "uvicorn.error")


class _LogLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


@dataclass
class InProcessServer(ServerEndpoints):
    """A served app on a fake engine; the same observing helpers as a `RunningServer`."""

    port: int = 0
    api_key: str | None = None
    app: Any = None
    llm: FakeAsyncLLM | None = None
    uvicorn: Any = None
    thread: threading.Thread | None = None
    exit_codes: list[int] = field(default_factory=list)
    logs: _LogLines = field(default_factory=_LogLines)

    @property
    def state(self) -> Any:
        return self.app.state.server

    @property
    def lifecycle(self) -> Any:
        return self.app.state.lifecycle

    def log_text(self) -> str:
        return "\n".join(self.logs.lines)

    def send_signal(self, sig: signal.Signals) -> None:
        """What the process's signal handler does for `sig` (SIGTERM, SIGINT)."""
        self.uvicorn.handle_exit(sig, None)

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def wait_stopped(self, timeout: float) -> bool:
        if self.thread is not None:
            self.thread.join(timeout)
        return not self.running


class _FakeEngines:
    """vLLM's `AsyncLLM.from_engine_args` hands out each in-process server's fake (found by its
    model path; any other path gets the real engine), and engine processes are none: the pytest
    process's children are live servers that a fake server's stop must never reap. In place while
    at least one in-process server lives."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_model: dict[str, FakeAsyncLLM] = {}
        self.saved: tuple[Any, Any] | None = None

    @contextlib.contextmanager
    def serving(self, model: str, llm: FakeAsyncLLM) -> Iterator[None]:
        from vllm.v1.engine import async_llm

        import server.ops.lifecycle as lifecycle

        by_model = self.by_model

        class AsyncLLM:
            @staticmethod
            def from_engine_args(engine_args: Any, *args: Any, **kwargs: Any) -> Any:
                fake = by_model.get(engine_args.model)
                if fake is None:
                    return real.from_engine_args(engine_args, *args, **kwargs)
                return fake.from_engine_args(engine_args)

        with self.lock:
            if not by_model:
                self.saved = async_llm.AsyncLLM, lifecycle.engine_processes
                async_llm.AsyncLLM, lifecycle.engine_processes = AsyncLLM, list
            real = self.saved[0]
            by_model[model] = llm
        try:
            yield
        finally:
            with self.lock:
                del by_model[model]
                if not by_model:
                    async_llm.AsyncLLM, lifecycle.engine_processes = self.saved


fake_engines = _FakeEngines()


@contextlib.contextmanager
def _environment(variables: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _wait(condition: Any, timeout: float, what: str, server: InProcessServer) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout:.0f} s:\n{server.log_text()[-4000:]}")
        if not server.running:
            raise RuntimeError(f"the server thread ended while waiting until {what}:\n{server.log_text()[-4000:]}")
        time.sleep(0.01)


@contextlib.contextmanager
def serving_fake(
    llm: FakeAsyncLLM | None = None,
    *,
    api_key: str | None = None,
    wait_ready: bool = True,
    stop_on_exit_request: bool = True,
    **settings: Any,
) -> Iterator[InProcessServer]:
    """Serve the real app on `llm` (a default `FakeAsyncLLM` when None) with `settings`.

    The server asks for its exit (engine death, a failed start) as `airoboros-server serve`
    does; the code goes to `exit_codes`, and the server stops unless `stop_on_exit_request` is
    False (to look at it in that state; the block's end stops it)."""
    from server.app import create_app
    from server.metrics import Metrics
    from server.ops.runner import DrainingServer, uvicorn_config
    from server.settings import Settings

    llm = llm or FakeAsyncLLM()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    # The "checkpoint" (only a config.json), the key to this server's fake (see `_FakeEngines`).
    model = fake_checkpoint()
    # The default responses store goes in a directory of this server's own, not ~/.local/share.
    data_dir = tempfile.mkdtemp(prefix="airoboros-fake-data-")
    values = {
        "model": Path(model), "served_model_name": FAKE_MODEL, "drain_timeout": 5.0, "data_dir": Path(data_dir),
        **settings,
    }
    # The key comes the way a deployment gives it: the environment, read when the settings are made.
    with _environment({"AIROBOROS_API_KEYS": api_key} if api_key else {}):
        config = Settings(**values)
    server = InProcessServer(port=port, api_key=api_key, llm=llm)

    def request_exit(code: int) -> None:
        server.exit_codes.append(code)
        if stop_on_exit_request:
            server.uvicorn.should_exit = True

    server.app = create_app(config, metrics=Metrics(CollectorRegistry()), request_exit=request_exit)
    server.uvicorn = DrainingServer(uvicorn_config(config, server.app), server.lifecycle, config.shutdown_delay)
    saved_levels = {}
    for name in LOGGERS:
        logger = logging.getLogger(name)
        saved_levels[name] = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(server.logs)
    server.thread = threading.Thread(
        target=server.uvicorn.run, kwargs={"sockets": [listener]}, name=f"fake-server-{server.port}", daemon=True
    )
    try:
        with fake_engines.serving(str(config.model), llm):
            try:
                server.thread.start()
                _wait(lambda: server.uvicorn.started, START_TIMEOUT_S, "uvicorn listens", server)
                if wait_ready:
                    _wait(lambda: server.state.ready, START_TIMEOUT_S + llm.load_delay_s, "ready", server)
                yield server
            finally:
                _stop(server, config.drain_timeout)
    finally:
        listener.close()
        shutil.rmtree(model, ignore_errors=True)
        shutil.rmtree(data_dir, ignore_errors=True)
        for name in LOGGERS:
            logger = logging.getLogger(name)
            logger.removeHandler(server.logs)
            logger.setLevel(saved_levels[name])
    assert not server.running, "the in-process server did not stop"


def _stop(server: InProcessServer, drain_timeout: float) -> None:
    if server.running:
        server.uvicorn.should_exit = True
        if not server.wait_stopped(drain_timeout + 15):
            server.uvicorn.force_exit = True
            server.wait_stopped(10)
