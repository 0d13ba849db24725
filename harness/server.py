"""The one launcher for server processes, in tests and in bench/: ports, start, readiness, stop.

`start_process` runs any server command (ours, `vllm serve`, ours inside a sandbox) in its own
process group with its log in a file, waits for readiness with a bounded deadline (showing the
log, or the server's thread stacks, when the start fails) and always stops the whole group, so
no engine process outlives its test. `launch_server` / `running_server` start ours
(`python -m server serve`) with the test defaults (eager mode, a 1 GiB CPU KV cache).
`ServerEndpoints` is what tests observe of any server, this one or the in-process one on a fake
engine (`tests/support/inprocess.py`): URLs, API-key headers, its model name, its access log.
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
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = float(os.environ.get("AIROBOROS_TEST_START_TIMEOUT", "420"))
LOOPBACK = "127.0.0.1"
# How long a test waits for an access-log line the server is about to write: the wait ends as soon
# as the line is there; the bound is for a CI machine that stalls for tens of seconds while an
# engine runs beside the tests.
ACCESS_LOG_WAIT_S = 60.0


def free_port() -> int:
    """A loopback port free now (the server binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def served_model(base_url: str, headers: dict[str, str] | None = None, verify: Any = True) -> str:
    """The first model a server lists: its served name."""
    response = httpx.get(base_url + "/v1/models", headers=headers or {}, timeout=10, trust_env=False, verify=verify)
    response.raise_for_status()
    return response.json()["data"][0]["id"]


class ServerEndpoints:
    """URLs and observations shared by every kind of test server (needs `port`, `api_key`,
    `log_text()`)."""

    port: int
    api_key: str | None
    # An HTTPS server: "https", and what httpx's `verify` needs to trust (and, for mutual TLS,
    # present to) it: an ssl.SSLContext.
    scheme: str = "http"
    verify: Any = True

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{LOOPBACK}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    @property
    def model(self) -> str:
        """The served model name (asked once)."""
        cached = self.__dict__.get("_model")
        if cached is None:
            cached = self.__dict__["_model"] = served_model(self.base_url, self.headers(), self.verify)
        return cached

    def log_text(self) -> str:
        raise NotImplementedError

    def access_log_lines(self, request_id: str) -> list[str]:
        """Every access-log line in the log so far for `request_id`."""
        return [
            line for line in self.log_text().splitlines()
            if "airoboros.access" in line and f'"request_id": "{request_id}"' in line
        ]

    def access_log_entry(self, request_id: str, wait_s: float = ACCESS_LOG_WAIT_S) -> dict:
        """The JSON of the access-log line the server wrote for `request_id` (fails when none).

        The line is written once the response has been sent, so a client can hold the answer a
        moment before it is in the log: look again until it is there, for up to `wait_s`.
        """
        deadline = time.monotonic() + wait_s
        while True:
            lines = self.access_log_lines(request_id)
            if lines:
                return json.loads(lines[0][lines[0].index("{"):])
            if time.monotonic() >= deadline:
                raise AssertionError(f"no access-log line for {request_id} in {wait_s:.0f} s")
            time.sleep(0.05)

    def access_log_barrier(self, wait_s: float = ACCESS_LOG_WAIT_S) -> None:
        """Send a request of our own and wait for its access-log line: once it is there, so is
        every line of a request answered before it was sent.

        The server writes each line in the request's own task just after its response's last
        message, and one event loop serves them all, so a request this client has its answer to
        is logged before the next one it sends. What a test then misses in the log was never
        written: no fixed sleep needed to assert that something is not logged.
        """
        request_id = f"log-barrier-{uuid.uuid4().hex}"
        httpx.get(
            self.base_url + "/v1/models", headers={**self.headers(), "X-Request-Id": request_id},
            timeout=wait_s, trust_env=False, verify=self.verify,
        )
        self.access_log_entry(request_id, wait_s)


@dataclass
class RunningServer(ServerEndpoints):
    process: subprocess.Popen
    port: int
    log_path: Path
    api_key: str | None = None
    extra: dict = field(default_factory=dict)
    scheme: str = "http"
    verify: Any = True

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_until_ready(
    server: RunningServer,
    timeout: float = START_TIMEOUT_S,
    ready_path: str = "/health/ready",
    also_ready: Sequence[str] = (),
) -> float:
    """Poll readiness (a new connection each time) until 200, then each of `also_ready`; return
    the seconds it took.

    Fails with the server's log if it exits first, or, out of time, with its threads' stacks
    (SIGUSR1, our server's handler) at the end of that log: where the start-up waits.
    """
    started = time.monotonic()
    paths = (ready_path, *also_ready)
    while time.monotonic() - started < timeout:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"server exited with {server.process.returncode} during start-up:\n" + server.log_text()[-6000:]
            )
        with contextlib.suppress(httpx.HTTPError):
            if all(
                httpx.get(server.base_url + path, timeout=2, trust_env=False, verify=server.verify).status_code == 200
                for path in paths
            ):
                return time.monotonic() - started
        time.sleep(0.25)
    with contextlib.suppress(ProcessLookupError):
        server.process.send_signal(signal.SIGUSR1)
        time.sleep(2)
    raise TimeoutError(f"server not ready in {timeout:.0f} s:\n" + server.log_text()[-12000:])


def stop_server(server: Any, timeout: float = 60) -> int | None:
    """SIGTERM the server (anything with a `process`) and wait; SIGKILL its whole process group
    if it does not exit, and in any case whatever of the group is left."""
    process: subprocess.Popen | None = server.process
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    return process.returncode


def start_process(
    command: Sequence[str],
    *,
    port: int,
    env: dict[str, str],
    log_path: Path | None = None,
    api_key: str | None = None,
    wait_ready: bool = True,
    ready_path: str = "/health/ready",
    also_ready: Sequence[str] = (),
    timeout: float = START_TIMEOUT_S,
    scheme: str = "http",
    verify: Any = True,
) -> RunningServer:
    """Run `command` (a server that will listen on `port`) in its own process group, its output
    in `log_path` (a new temporary file when None); the caller must `stop_server` it."""
    if log_path is None:
        with tempfile.NamedTemporaryFile(prefix="airoboros-server-", suffix=".log", delete=False) as log_file:
            log_path = Path(log_file.name)
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            list(command),
            cwd=REPO_ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so cleanup reaches engine children
        )
    server = RunningServer(
        process=process, port=port, log_path=log_path, api_key=api_key, scheme=scheme, verify=verify
    )
    server.extra["command"] = list(command)
    if wait_ready:
        try:
            server.extra["started_in_s"] = wait_until_ready(server, timeout, ready_path, also_ready)
        except BaseException:
            stop_server(server)
            raise
    return server


def serve_command(*args: str, port: int) -> list[str]:
    """`python -m server serve` on loopback `port` with `args`."""
    return [sys.executable, "-m", "server", "serve", "--host", LOOPBACK, "--port", str(port), *args]


def child_environment(env: dict[str, str] | None = None, api_key: str | None = None) -> dict[str, str]:
    """This process's environment, offline, with the test defaults under `env`."""
    child_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    # Fast start-up matters more than decode speed in tests; the machine is shared.
    child_env.setdefault("AIROBOROS_ENFORCE_EAGER", "true")
    child_env.setdefault("AIROBOROS_CPU_KV_CACHE_GIB", "1")
    # The stand-in model gets the airoboros prompt in tests, as an MPT checkpoint does in
    # production: the suite checks that format end to end. What `make serve` gives (its own
    # ChatML) is checked where a test asks for `auto` (test_first_run.py).
    child_env.setdefault("AIROBOROS_PROMPT_FORMAT", "airoboros")
    # The default responses store (SQLite under the data directory), in a directory of this
    # server's own: never the user's ~/.local/share, never shared with another test's server.
    child_env.setdefault("AIROBOROS_DATA_DIR", tempfile.mkdtemp(prefix="airoboros-test-data-"))
    if api_key:
        child_env["AIROBOROS_API_KEYS"] = api_key
    child_env.update(env or {})
    return child_env


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
    return start_process(
        serve_command(*args, port=port), port=port, env=child_environment(env, api_key), api_key=api_key,
        wait_ready=wait_ready, ready_path=ready_path, scheme=scheme, verify=verify,
    )


def refused_start_log(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """Start `python -m server serve <args>` that must refuse to start: wait for it to exit with
    status 1 (the bound only stops a server that hangs instead) and return its log."""
    server = launch_server(*args, env=env, wait_ready=False)
    try:
        code = server.process.wait(timeout=timeout)
    finally:
        stop_server(server)
    log = server.log_text()
    assert code == 1, log[-3000:]
    return log


@contextlib.contextmanager
def running_server(*args: str, **kwargs) -> Iterator[RunningServer]:
    server = launch_server(*args, **kwargs)
    try:
        yield server
    finally:
        stop_server(server)


@contextlib.contextmanager
def servers_started_together(args_by_name: dict[str, Sequence[str]]) -> Iterator[dict[str, RunningServer]]:
    """One server of ours per name, launched at once so that their engine starts overlap, each
    ready before the block runs, and every one stopped after it (or when a start fails)."""
    launched: dict[str, RunningServer] = {}
    try:
        for name, args in args_by_name.items():
            launched[name] = launch_server(*args, wait_ready=False)
        for server in launched.values():
            wait_until_ready(server)
        yield launched
    finally:
        for server in launched.values():
            stop_server(server)
