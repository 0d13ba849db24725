"""How the server process ends, each test on a real server of its own that it ends.

- SIGTERM with time enough: readiness 503 at once (and requests still served during
  `--shutdown-delay`), in-flight streams and requests run to their end, new connections are
  refused once the listening socket closes, the process exits 0 and leaves no child behind.
- SIGINT with a drain timeout shorter than the generations: what still runs at the deadline ends
  with a final OpenAI error event and `data: [DONE]`, and the process still exits 0, in time.
- Engine death (the vLLM engine core process killed under load): liveness and readiness 503
  within seconds, in-flight streams and requests end with an error (no hang), new requests get
  503, and the process exits non-zero (so the orchestrator restarts it), leaving no child behind.

The servers these tests need start together before the first test (engine starts overlap well:
three take little longer than one) and each is ready before any test runs, so no start-up load
disturbs the timings measured.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import warnings
from dataclasses import dataclass, field

import httpx
import pytest

from tests.support.load import (
    SSEEvent,
    describe,
    descendants,
    find_engine_core,
    parse_sse_line,
    wait_all_gone,
)
from tests.support.server import RunningServer, launch_server, stop_server, wait_until_ready

pytestmark = pytest.mark.engine

STREAMS = 3
SIGTERM_DRAIN_S = 30.0
# Long, so that the socket's closing (a tenth of a second after the signal) and the drain's end
# stay far apart on the client's clock too. On CI this test's own process has stalled through the
# whole drain in three runs in a row (2 s and 5 s drains, never here); the ordering is then judged
# on the server's log alone (see the test).
SIGINT_DRAIN_S = 10.0
# The server each test needs, by test name.
SERVER_ARGS = {
    "test_sigterm_lets_in_flight_streams_finish_then_exits_0":
        ("--drain-timeout", str(SIGTERM_DRAIN_S), "--shutdown-delay", "1.5"),
    "test_sigint_ends_what_outlives_the_drain_timeout_with_an_error_event":
        ("--drain-timeout", str(SIGINT_DRAIN_S)),
    "test_a_dead_engine_turns_probes_503_fails_requests_and_exits_non_zero": (),
}


@pytest.fixture(scope="module")
def servers(request) -> dict[str, RunningServer]:
    """Start, all at once, the servers of the tests selected in this module."""
    wanted = [item.name for item in request.session.items if item.module is request.module]
    launched: dict[str, RunningServer] = {}
    try:
        for name in wanted:
            launched[name] = launch_server(*SERVER_ARGS[name], wait_ready=False)
        for server in launched.values():
            wait_until_ready(server)
        yield launched
    finally:
        for server in launched.values():
            stop_server(server)


@pytest.fixture
def server(servers, request) -> RunningServer:
    return servers[request.node.name]


def _model(server: RunningServer) -> str:
    return httpx.get(server.base_url + "/v1/models", timeout=10).json()["data"][0]["id"]


def _wait_exit(server: RunningServer, timeout: float) -> int | None:
    try:
        return server.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


# --- drain ------------------------------------------------------------------------------------


@dataclass
class StreamRecord:
    events: list[SSEEvent] = field(default_factory=list)
    generating: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def finish_reasons(self) -> list[str]:
        reasons = []
        for event in self.events:
            if event.data and not event.is_done and not event.is_error:
                reasons += [c["finish_reason"] for c in event.json()["choices"] if c.get("finish_reason")]
        return reasons


async def _stream(client: httpx.AsyncClient, body: dict, record: StreamRecord) -> None:
    async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            event = parse_sse_line(line)
            if event is not None:
                record.events.append(event)
                if event.content:
                    record.generating.set()


async def _probe_until_refused(base_url: str, budget_s: float, since: float) -> list[tuple[float, int | str, str]]:
    """Readiness on a new connection every 50 ms, until two refusals in a row (bounded).

    Each probe is timed from `since` (the signal) to its answer: a status code, or "refused" when
    no answer came, with the transport error's name (a connection refused, or one reset because
    it was still queued when the socket closed) for the failure message.
    """
    probes: list[tuple[float, int | str, str]] = []
    started = time.monotonic()
    while time.monotonic() - started < budget_s:
        try:
            async with httpx.AsyncClient(base_url=base_url, timeout=2) as client:
                status = (await client.get("/health/ready")).status_code
            probes.append((time.monotonic() - since, status, ""))
        except httpx.TransportError as error:
            probes.append((time.monotonic() - since, "refused", type(error).__name__))
        if [r for _, r, _ in probes[-2:]] == ["refused", "refused"]:
            break
        await asyncio.sleep(0.05)
    return probes


class LoopStalls:
    """Gaps in this test's own event loop (a task that wakes every 20 ms): when the test process
    itself was not running, what it timed in that gap says nothing of the server's order."""

    def __init__(self, threshold_s: float = 1.0) -> None:
        self.threshold_s = threshold_s
        self.gaps: list[tuple[float, float]] = []  # (monotonic start, length)
        self._task: asyncio.Task | None = None

    async def _watch(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.02)
            now = time.monotonic()
            if now - last > self.threshold_s:
                self.gaps.append((last, now - last))
            last = now

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def since(self, origin: float) -> list[tuple[float, float]]:
        return [(round(start - origin, 3), round(length, 3)) for start, length in self.gaps]


@dataclass
class DrainRun:
    streams: list[StreamRecord]
    plain: httpx.Response
    probes: list[tuple[float, int | str, str]]
    during_delay: httpx.Response | None
    signalled_at: float
    stream_ends: list[float]
    stalls: list[tuple[float, float]]


async def _drain_under_load(
    server: RunningServer, model: str, sig: signal.Signals, max_tokens: int, *, request_during_delay: bool
) -> DrainRun:
    # Completions, not chat: no format stop string (USER:) can end a generation early.
    body = {"model": model, "prompt": "Once upon a time", "max_tokens": max_tokens, "ignore_eos": True}
    records = [StreamRecord() for _ in range(STREAMS)]
    ends: list[float] = []
    stalls = LoopStalls()
    stalls.start()
    async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:

        async def stream_and_time(record: StreamRecord) -> None:
            await _stream(client, body, record)
            ends.append(time.monotonic())

        streams = [asyncio.create_task(stream_and_time(r)) for r in records]
        plain = asyncio.create_task(client.post("/v1/completions", json=body))
        await asyncio.wait_for(asyncio.gather(*(r.generating.wait() for r in records)), 120)
        signalled_at = time.monotonic()
        server.process.send_signal(sig)

        async def request_now() -> httpx.Response | None:
            if not request_during_delay:
                return None
            async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as fresh:
                return await fresh.post("/v1/completions", json={**body, "max_tokens": 2})

        probes, during_delay = await asyncio.gather(_probe_until_refused(server.base_url, 15, signalled_at), request_now())
        await asyncio.wait_for(asyncio.gather(*streams), 120)
        plain_response = await asyncio.wait_for(plain, 120)
    stalls.stop()
    return DrainRun(
        records, plain_response, probes, during_delay, signalled_at, [e - signalled_at for e in ends],
        stalls.since(signalled_at),
    )


def test_sigterm_lets_in_flight_streams_finish_then_exits_0(server):
    drain_timeout = SIGTERM_DRAIN_S
    children = descendants(server.process.pid)
    run = asyncio.run(_drain_under_load(server, _model(server), signal.SIGTERM, 120, request_during_delay=True))
    code = _wait_exit(server, timeout=drain_timeout + 30)
    exit_after = time.monotonic() - run.signalled_at
    orphans = wait_all_gone(children, timeout=30)
    # Readiness 503 from the signal on, then the socket closes: a new connection is refused.
    results = [r for _, r, _ in run.probes]
    assert results[0] == 503, run.probes
    assert results[-1] == "refused", run.probes
    assert set(results) <= {503, "refused"}, run.probes
    # During --shutdown-delay the server still serves what a load balancer sends.
    assert run.during_delay is not None and run.during_delay.status_code == 200
    # Every stream ran to its end: a finish reason, then [DONE], no error.
    for record in run.streams:
        assert record.events[-1].is_done
        assert not any(e.is_error for e in record.events)
        assert record.finish_reasons == ["length"]
    assert run.plain.status_code == 200 and run.plain.json()["choices"][0]["finish_reason"] == "length"
    assert code == 0, f"exit code {code}:\n{server.log_text()[-3000:]}"
    assert exit_after < drain_timeout + 30
    assert not orphans, describe(orphans)


def _line_index(log: str, text: str) -> int:
    """The number of the first log line containing `text` (fails when none does)."""
    lines = log.splitlines()
    found = next((number for number, line in enumerate(lines) if text in line), None)
    assert found is not None, f"no log line with {text!r}:\n{log[-3000:]}"
    return found


def _last_tokens(run: DrainRun) -> list[list[float]]:
    """When each stream's last three tokens reached this test, in seconds from the signal."""
    return [
        [round(e.at - run.signalled_at, 3) for e in record.events if e.content][-3:] for record in run.streams
    ]


def test_sigint_ends_what_outlives_the_drain_timeout_with_an_error_event(server):
    drain_timeout = SIGINT_DRAIN_S
    children = descendants(server.process.pid)
    run = asyncio.run(_drain_under_load(server, _model(server), signal.SIGINT, 4000, request_during_delay=False))
    code = _wait_exit(server, timeout=drain_timeout + 30)
    exit_after = time.monotonic() - run.signalled_at
    orphans = wait_all_gone(children, timeout=30)
    results = [r for _, r, _ in run.probes]
    assert results[-1] == "refused" and set(results) <= {503, "refused"}, run.probes
    # Without --shutdown-delay the listening socket closes at once: new connections are refused
    # while the drain still runs, before its deadline ends the streams. Judged on the server's
    # clock (its log, one process, in order: uvicorn logs "Shutting down" as it closes the socket)
    # and, when this test's own loop ran through the window, on the client's clock as well.
    refused_at = next(at for at, result, _ in run.probes if result == "refused")
    log = server.log_text()
    diagnosis = (
        f"probes {run.probes}, stream ends {run.stream_ends}, this test's loop stalls {run.stalls}, "
        f"last tokens {_last_tokens(run)}\n{log[-3000:]}"
    )
    assert _line_index(log, "uvicorn.error: Shutting down") < _line_index(log, '"path": "/v1/completions"'), diagnosis
    stalled = [(start, length) for start, length in run.stalls if start < refused_at and start + length > 0]
    if stalled:
        warnings.warn(
            f"this test's own event loop stalled {stalled} (seconds from the signal, length) before the "
            f"first refusal: the client's clock cannot order the refusal and the drain's end; the server's log did",
            stacklevel=1,
        )
    else:
        assert refused_at < min(run.stream_ends), diagnosis
    for record in run.streams:
        assert record.events[-1].is_done
        error = record.events[-2]
        assert error.is_error, record.events[-3:]
        assert error.json()["error"]["type"] == "server_error"
        assert error.json()["error"]["code"] == "unavailable"
        assert record.finish_reasons == []
    assert all(drain_timeout <= ended < drain_timeout + 5 for ended in run.stream_ends), run.stream_ends
    assert run.plain.status_code == 503
    assert run.plain.json()["error"]["code"] == "unavailable"
    assert code == 0, f"exit code {code}:\n{server.log_text()[-3000:]}"
    assert exit_after < drain_timeout + 20
    assert not orphans, describe(orphans)


# --- engine death -----------------------------------------------------------------------------


async def _kill_engine_under_load(server: RunningServer, model: str) -> dict:
    body = {"model": model, "prompt": "Once upon a time", "max_tokens": 4000, "ignore_eos": True}
    generating = [asyncio.Event(), asyncio.Event()]
    ended: dict[str, float] = {}

    async def stream(client: httpx.AsyncClient, flag: asyncio.Event, name: str) -> list:
        events = []
        async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
            async for line in response.aiter_lines():
                event = parse_sse_line(line)
                if event is not None:
                    events.append(event)
                    if event.content:
                        flag.set()
        ended[name] = time.monotonic()
        return events

    async def plain(client: httpx.AsyncClient) -> httpx.Response:
        response = await client.post("/v1/completions", json=body)
        ended["plain"] = time.monotonic()
        return response

    async def probe() -> list[tuple[float, int | str, int | str, int | str]]:
        probes = []
        started = time.monotonic()
        while time.monotonic() - started < 20:
            try:
                async with httpx.AsyncClient(base_url=server.base_url, timeout=3) as fresh:
                    live = (await fresh.get("/health/live")).status_code
                    ready = (await fresh.get("/health/ready")).status_code
                    new = (await fresh.post("/v1/completions", json={"model": model, "prompt": "Hi", "max_tokens": 2})).status_code
            except httpx.TransportError:
                probes.append((time.monotonic() - started, "refused", "refused", "refused"))
                break
            probes.append((time.monotonic() - started, live, ready, new))
            await asyncio.sleep(0.1)
        return probes

    async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
        tasks = [asyncio.create_task(stream(client, flag, f"stream{i}")) for i, flag in enumerate(generating)]
        tasks.append(asyncio.create_task(plain(client)))
        await asyncio.wait_for(asyncio.gather(*(flag.wait() for flag in generating)), 120)
        core = find_engine_core(server.process.pid)
        killed_at = time.monotonic()
        core.kill()
        probes, *answers = await asyncio.gather(probe(), asyncio.wait_for(asyncio.gather(*tasks), 60))
    streams_and_plain = answers[0]
    return {
        "core": core, "probes": probes, "streams": streams_and_plain[:2], "plain": streams_and_plain[2],
        "ended_after": {name: at - killed_at for name, at in ended.items()}, "killed_at": killed_at,
    }


def test_a_dead_engine_turns_probes_503_fails_requests_and_exits_non_zero(server):
    children = descendants(server.process.pid)
    run = asyncio.run(_kill_engine_under_load(server, _model(server)))
    code = _wait_exit(server, timeout=60)
    exit_after = time.monotonic() - run["killed_at"]
    orphans = wait_all_gone(children, timeout=30)
    assert run["core"].pid in {p.pid for p in children}
    probes = run["probes"]
    answered = [p for p in probes if p[1] != "refused"]
    # Within seconds: liveness and readiness 503, new requests 503, until the process is gone.
    first_dead = next((p for p in answered if p[1] == 503), None)
    assert first_dead is not None and first_dead[0] < 5.0, probes
    assert all((live, ready) == (503, 503) for _, live, ready, _ in answered[answered.index(first_dead):]), probes
    assert any(new == 503 for *_, new in answered[answered.index(first_dead):]), probes
    # In-flight work ended with an error instead of hanging.
    for events in run["streams"]:
        assert events[-1].is_done and events[-2].is_error, events[-3:]
        assert "engine" in events[-2].json()["error"]["message"]
    assert run["plain"].status_code in (500, 503)
    assert "engine" in run["plain"].json()["error"]["message"]
    assert all(after < 10 for after in run["ended_after"].values()), run["ended_after"]
    # The process exits non-zero by itself, leaving nothing behind.
    assert code is not None and code > 0, f"exit code {code}:\n{server.log_text()[-3000:]}"
    assert exit_after < 30
    assert not orphans, describe(orphans)
