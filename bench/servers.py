"""The two servers under test, started with the same engine settings, and their processes.

`EngineConfig` is everything that shapes the engine (model, dtype, context, KV cache, batch
size, eager or compiled, preloaded libraries); `ours_command` and `vllm_command` turn one config
into each server's flags, so the two cannot drift apart. They are started, awaited and stopped
by the tests' one launcher (`harness/server.py`): each in its own process group (cleanup
reaches its engine children) with its log in a file.

The front end is the process that listens on the server's port (uvicorn + the API code); vLLM's
engine core and worker are its children. `ProcessProbe` reads the front end's CPU time and RSS
only, and the engine's CPU time separately, so "front-end cost" excludes the model.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from harness.server import REPO_ROOT, serve_command, start_process, stop_server

BENCH_DIR = REPO_ROOT / "bench"
CHAT_TEMPLATE = BENCH_DIR / "airoboros.jinja"
START_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class EngineConfig:
    model_dir: Path
    served_name: str
    use_default_model: bool  # ours gets no --model (the embedded default); vLLM gets model_dir
    dtype: str = "bfloat16"
    max_model_len: int = 2048
    kv_cache_gib: int = 1  # 64 streams x ~200 tokens need ~0.3 GiB for SmolLM2; the machine is shared
    max_num_seqs: int = 64
    # Our server passes no max_num_batched_tokens, so vLLM's engine default (2048 on CPU) applies;
    # `vllm serve` is given the same number explicitly (its CLI default is context-dependent).
    max_num_batched_tokens: int = 2048
    enforce_eager: bool = True
    ld_preload: str = ""

    def environment(self) -> dict[str, str]:
        env = {
            key: value for key, value in os.environ.items() if not key.startswith("AIROBOROS_")
        }
        env.update(
            {
                "HF_HUB_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": str(REPO_ROOT),
                "VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gib),
            }
        )
        if self.ld_preload:
            env["LD_PRELOAD"] = self.ld_preload
        else:
            env.pop("LD_PRELOAD", None)
        return env


def ours_command(config: EngineConfig, port: int) -> list[str]:
    command = serve_command(
        "--dtype", config.dtype,
        "--max-model-len", str(config.max_model_len),
        "--cpu-kv-cache-gib", str(config.kv_cache_gib),
        "--max-num-seqs", str(config.max_num_seqs),
        "--enforce-eager" if config.enforce_eager else "--no-enforce-eager",
        "--served-model-name", config.served_name,
        "--drain-timeout", "5",
        # `vllm serve` gets bench/airoboros.jinja; the default model's own format (auto) is ChatML.
        "--prompt-format", "airoboros",
        port=port,
    )
    if not config.use_default_model:
        command += ["--model", str(config.model_dir)]
    return command


def vllm_command(config: EngineConfig, port: int) -> list[str]:
    command = [
        sys.executable, "-m", "bench.vllm_serve", str(config.model_dir),
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", config.dtype,
        "--max-model-len", str(config.max_model_len),
        "--max-num-seqs", str(config.max_num_seqs),
        "--max-num-batched-tokens", str(config.max_num_batched_tokens),
        "--served-model-name", config.served_name,
        "--chat-template", str(CHAT_TEMPLATE),
    ]
    if config.enforce_eager:
        command.append("--enforce-eager")
    return command


@dataclass
class Server:
    """A running server: ours, vLLM's, or one started by someone else (`process` None)."""

    name: str
    base_url: str
    model: str
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    started_in_s: float | None = None
    frontend_pid: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1].split("/")[0])

    def log_tail(self, chars: int = 4000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]


def launch(name: str, command: list[str], env: dict[str, str], port: int, model: str, ready_path: str, log_dir: Path) -> Server:
    """Start a server and wait until `ready_path` and its model list answer 200."""
    running = start_process(
        command, port=port, env=env, log_path=log_dir / f"{name}-{port}.log", ready_path=ready_path,
        also_ready=("/v1/models",), timeout=START_TIMEOUT_S,
    )
    server = Server(name=name, base_url=running.base_url, model=model, process=running.process, log_path=running.log_path)
    server.extra["command"] = command
    server.started_in_s = running.extra["started_in_s"]
    server.frontend_pid = find_frontend_pid(server.port, running.process.pid)
    return server


def stop(server: Server, timeout: float = 30) -> None:
    stop_server(server, timeout)


def find_frontend_pid(port: int, hint: int | None = None) -> int | None:
    """The process listening on `port` (the API server), preferring `hint` and its children."""
    candidates = []
    if hint is not None:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(hint)
            candidates = [root, *root.children(recursive=True)]
    for process in candidates:
        with contextlib.suppress(psutil.Error):
            for conn in process.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                    return process.pid
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return conn.pid
    return hint


def find_libraries() -> dict[str, str | None]:
    """tcmalloc and Intel OpenMP, as vLLM's CPU guide asks for in LD_PRELOAD, where present."""
    import glob

    prefix = Path(sys.prefix)
    found: dict[str, str | None] = {"tcmalloc": None, "iomp": None}
    for pattern in (
        "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so*", "/usr/lib/x86_64-linux-gnu/libtcmalloc.so*",
        "/usr/lib64/libtcmalloc*.so*", str(prefix / "lib" / "libtcmalloc*.so*"),
    ):
        hits = sorted(glob.glob(pattern))
        if hits:
            found["tcmalloc"] = hits[0]
            break
    hits = sorted(glob.glob(str(prefix / "lib" / "libiomp5.so")))
    found["iomp"] = hits[0] if hits else None
    return found


class ProcessProbe:
    """CPU seconds of the front end and of its engine children, and the front end's peak RSS.

    RSS is sampled every `interval_s` on a thread while a run lasts; `VmHWM` (the kernel's
    lifetime peak) is reported beside it.
    """

    def __init__(self, frontend_pid: int, interval_s: float = 0.1) -> None:
        self.frontend = psutil.Process(frontend_pid)
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.peak_rss = 0
        self._start: tuple[float, float] | None = None

    def _engine_cpu(self) -> float:
        total = 0.0
        for child in self.frontend.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                times = child.cpu_times()
                total += times.user + times.system
        return total

    def _frontend_cpu(self) -> float:
        times = self.frontend.cpu_times()
        return times.user + times.system

    def _sample(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                self.peak_rss = max(self.peak_rss, self.frontend.memory_info().rss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "ProcessProbe":
        self.peak_rss = self.frontend.memory_info().rss
        self._start = (self._frontend_cpu(), self._engine_cpu())
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        assert self._start is not None
        self.frontend_cpu_s = self._frontend_cpu() - self._start[0]
        self.engine_cpu_s = self._engine_cpu() - self._start[1]
        self.vm_hwm = _vm_hwm(self.frontend.pid)


def _vm_hwm(pid: int) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and all its descendants (for an idle server's background cost)."""
    total = 0.0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
    return total


def log_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="airoboros-bench-logs-"))
