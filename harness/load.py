"""Observing and loading a running server: metrics, its processes, the soak's mixed load.

Everything here is bounded: every wait has a deadline, the load a fixed number of requests, a
concurrency limit and a per-request timeout (a request past it counts as a hang). The streams
themselves are read by the one load generator, `harness/streams.py`.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import psutil

from harness.sse import SSEEvent, parse_sse_line  # noqa: F401 - tests import them from here
from harness.streams import closed_loop, read_stream

# --- metrics ---------------------------------------------------------------------------------


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 when there is none)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        metric, _, label_text = series.partition("{")
        if metric != name:
            continue
        if all(f'{key}="{wanted}"' in label_text for key, wanted in labels.items()):
            total += float(value)
    return total


def metric_families(text: str) -> set[str]:
    """Names declared by `# TYPE` lines (present even for a labelled series with no sample yet)."""
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def scrape(base_url: str, headers: dict[str, str] | None = None) -> str:
    response = httpx.get(base_url + "/metrics", headers=headers or {}, timeout=10)
    response.raise_for_status()
    return response.text


def wait_for_metric(
    base_url: str, name: str, predicate: Callable[[float], bool], timeout: float, **labels: str
) -> tuple[bool, float, float]:
    """Poll /metrics until `predicate(value)`; returns (met, last value, seconds waited)."""
    started = time.monotonic()
    value = float("nan")
    while True:
        value = metric_value(scrape(base_url), name, **labels)
        waited = time.monotonic() - started
        if predicate(value):
            return True, value, waited
        if waited >= timeout:
            return False, value, waited
        time.sleep(0.05)


# --- the server's processes --------------------------------------------------------------


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def find_engine_core(server_pid: int) -> psutil.Process:
    """The vLLM engine core: a child of the server whose process title or command line says so."""
    candidates = []
    for child in descendants(server_pid):
        try:
            title = " ".join([child.name(), *child.cmdline()])
            parent = child.ppid()
        except psutil.Error:
            continue
        if "EngineCore" in title:
            candidates.append((parent != server_pid, child))  # direct children first
    if not candidates:
        raise AssertionError(f"no EngineCore process under server pid {server_pid}")
    return sorted(candidates, key=lambda pair: pair[0])[0][1]


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    left = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                left.append(process)
        except psutil.NoSuchProcess:
            pass
    return left


def describe(processes: list[psutil.Process]) -> list[str]:
    out = []
    for process in processes:
        try:
            out.append(f"{process.pid} ppid={process.ppid()} {process.status()} {' '.join(process.cmdline())[:160]}")
        except psutil.Error as error:
            out.append(f"{process.pid} ({type(error).__name__})")
    return out


def wait_all_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until none of `processes` runs; returns those still running at the deadline."""
    deadline = time.monotonic() + timeout
    left = alive(processes)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = alive(left)
    return left


def rss_bytes(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


# --- a bounded load generator -----------------------------------------------------------------

# What the soak sends. Valid kinds must never get a 5xx; bad bodies must get a 4xx.
VALID_KINDS = ("chat_stream", "chat", "completion", "completion_stream")
DISCONNECT_KINDS = ("disconnect_stream", "disconnect_wait")
BAD_KINDS = ("bad_json", "bad_type", "bad_model")


@dataclass
class LoadReport:
    requests: int = 0
    concurrency: int = 0
    seconds: float = 0.0
    by_kind: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)  # "kind:status"
    hangs: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # what broke the contract

    def summary(self) -> str:
        lines = [
            f"requests={self.requests} concurrency={self.concurrency} seconds={self.seconds:.1f}",
            "by kind: " + ", ".join(f"{k}={v}" for k, v in sorted(self.by_kind.items())),
            "statuses: " + ", ".join(f"{k}={v}" for k, v in sorted(self.statuses.items())),
            f"hangs={len(self.hangs)} failures={len(self.failures)}",
        ]
        return "\n".join(lines)


class LoadGenerator:
    """Sends `requests` mixed requests, `concurrency` at a time, each bounded by `timeout`."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        headers: dict[str, str] | None = None,
        seed: int = 6,
        timeout: float = 60.0,
        max_tokens: tuple[int, int] = (4, 24),
    ) -> None:
        self.base_url = base_url
        self.model = model
        self.headers = headers or {}
        self.random = random.Random(seed)
        self.timeout = timeout
        self.max_tokens = max_tokens

    def plan(self, requests: int) -> list[str]:
        weights = {
            "chat_stream": 30, "chat": 25, "completion": 10, "completion_stream": 10,
            "disconnect_stream": 8, "disconnect_wait": 7,
            "bad_json": 4, "bad_type": 3, "bad_model": 3,
        }
        kinds = list(weights)
        return self.random.choices(kinds, weights=[weights[k] for k in kinds], k=requests)

    def _body(self, kind: str, index: int) -> dict:
        max_tokens = self.random.randint(*self.max_tokens)
        if kind.startswith("completion"):
            return {
                "model": self.model, "prompt": f"Item {index}: the weather today is",
                "max_tokens": max_tokens, "stream": kind.endswith("stream"),
            }
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": f"Request {index}. Name a colour."}],
            "max_tokens": max_tokens if not kind.startswith("disconnect") else 400,
            "stream": kind in ("chat_stream", "disconnect_stream"),
        }

    async def _one(self, client: httpx.AsyncClient, kind: str, index: int, report: LoadReport) -> None:
        url = "/v1/completions" if kind.startswith("completion") else "/v1/chat/completions"
        status: int | str
        try:
            status = await asyncio.wait_for(self._send(client, kind, index, url), self.timeout)
        except asyncio.TimeoutError:
            report.hangs.append(f"{kind}#{index}")
            status = "hang"
        except httpx.HTTPError as error:
            status = type(error).__name__
        report.statuses[f"{kind}:{status}"] += 1
        if kind in VALID_KINDS and status != 200:
            report.failures.append(f"{kind}#{index}: {status}")
        if kind in BAD_KINDS and not (isinstance(status, int) and 400 <= status < 500):
            report.failures.append(f"{kind}#{index}: {status}")

    async def _send(self, client: httpx.AsyncClient, kind: str, index: int, url: str) -> int | str:
        if kind == "bad_json":
            response = await client.post(url, content=b'{"model": "x", "messages": [', headers={"content-type": "application/json"})
            return response.status_code
        body = self._body(kind, index)
        if kind == "bad_type":
            body["max_tokens"] = "lots"
        elif kind == "bad_model":
            body["model"] = "no-such-model"
        if kind == "disconnect_wait":
            # Leave a non-streaming request while it generates.
            try:
                await asyncio.wait_for(client.post(url, json=body), self.random.uniform(0.05, 0.5))
            except asyncio.TimeoutError:
                return "left"
            return "finished-before-leaving"
        if body.get("stream"):
            record = await read_stream(client, url, body, leave_after_content=kind == "disconnect_stream")
            if record.error == "left" or (record.status == 200 and record.error is None and record.saw_done):
                return "left" if record.error == "left" else 200
            if record.error is not None and record.error.startswith("error event"):
                return "stream-error"
            if record.status is not None and record.status != 200:
                return record.status
            # A transport error (its type's name), or a stream that ended without [DONE].
            return record.error.split(":")[0] if record.error else "stream-truncated"
        response = await client.post(url, json=body)
        if response.status_code == 200:
            response.json()
        return response.status_code

    async def run(self, requests: int, concurrency: int) -> LoadReport:
        report = LoadReport(requests=requests, concurrency=concurrency)
        kinds = self.plan(requests)
        report.by_kind.update(kinds)
        limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(
            base_url=self.base_url, headers=self.headers, timeout=self.timeout, limits=limits
        ) as client:

            async def one(index: int) -> None:
                await self._one(client, kinds[index], index, report)

            # Each request is bounded by its own timeout, so the loop by one timeout per round of
            # `concurrency` requests.
            report.seconds = await closed_loop(
                one, concurrency=concurrency, max_requests=requests,
                time_limit_s=self.timeout * math.ceil(requests / concurrency),
            )
        return report
