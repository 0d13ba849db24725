"""Start the real server (uvicorn + vLLM engine) in a child process on a free loopback port.

Every engine-backed test goes through `running_server`: it waits for readiness with a bounded
deadline, shows the server's log when start-up fails, and always stops the process group so no
engine process outlives the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = float(os.environ.get("AIROBOROS_TEST_START_TIMEOUT", "420"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    process: subprocess.Popen
    port: int
    log_path: Path
    api_key: str | None = None
    extra: dict = field(default_factory=dict)
    # An HTTPS server: "https", and what httpx's `verify` needs to trust (and, for mutual TLS,
    # present to) it: an ssl.SSLContext.
    scheme: str = "http"
    verify: Any = True

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def access_log_entry(self, request_id: str) -> dict:
        """The JSON of the access-log line the server wrote for `request_id` (fails when none)."""
        for line in self.log_text().splitlines():
            if "airoboros.access" in line and f'"request_id": "{request_id}"' in line:
                return json.loads(line[line.index("{"):])
        raise AssertionError(f"no access-log line for {request_id}")

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def wait_until_ready(server: RunningServer, timeout: float = START_TIMEOUT_S, ready_path: str = "/health/ready") -> float:
    """Poll readiness (a new connection each time) until 200; return the seconds it took.

    Fails with the server's log if it exits first, or, out of time, with its threads' stacks
    (SIGUSR1) at the end of that log: where the start-up waits.
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"server exited with {server.process.returncode} during start-up:\n" + server.log_text()[-6000:]
            )
        try:
            if httpx.get(server.base_url + ready_path, timeout=2, verify=server.verify).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    with contextlib.suppress(ProcessLookupError):
        server.process.send_signal(signal.SIGUSR1)
        time.sleep(2)
    raise TimeoutError(f"server not ready in {timeout:.0f} s:\n" + server.log_text()[-12000:])


def stop_server(server: RunningServer, timeout: float = 60) -> int | None:
    """SIGTERM the server and wait; SIGKILL its whole process group if it does not exit."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(server.process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.process.wait(timeout=10)
    return server.process.returncode


def launch_server(
    *args: str,
    env: dict[str, str] | None = None,
    api_key: str | None = None,
    wait_ready: bool = True,
    ready_path: str = "/health/ready",
    port: int | None = None,
    scheme: str = "http",
    verify: Any = True,
) -> RunningServer:
    """Start `python -m server serve <args>`; the caller must `stop_server` it."""
    port = port or free_port()
    log_file = tempfile.NamedTemporaryFile(
        prefix="airoboros-server-", suffix=".log", delete=False
    )
    child_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    # Fast start-up matters more than decode speed in tests.
    child_env.setdefault("AIROBOROS_ENFORCE_EAGER", "true")
    child_env.setdefault("AIROBOROS_CPU_KV_CACHE_GIB", "1")
    if api_key:
        child_env["AIROBOROS_API_KEYS"] = api_key
    child_env.update(env or {})
    command = [sys.executable, "-m", "server", "serve", "--host", "127.0.0.1", "--port", str(port), *args]
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=child_env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so cleanup reaches engine children
    )
    server = RunningServer(
        process=process, port=port, log_path=Path(log_file.name), api_key=api_key, scheme=scheme, verify=verify
    )
    if wait_ready:
        try:
            wait_until_ready(server, ready_path=ready_path)
        except BaseException:
            stop_server(server)
            raise
    return server


@contextlib.contextmanager
def running_server(*args: str, **kwargs) -> Iterator[RunningServer]:
    server = launch_server(*args, **kwargs)
    try:
        yield server
    finally:
        stop_server(server)
