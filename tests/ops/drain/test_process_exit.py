"""How the server process ends, each test on a real server of its own that it ends.

- SIGTERM with time enough: readiness 503 at once (and requests still served during
  `--shutdown-delay`), in-flight streams and requests run to their end, new connections are
  refused once the listening socket closes, the process exits 0 and leaves no child behind.
- (SIGINT with a drain timeout shorter than the generations, what still runs at the deadline ending
  with an error event, and the shutdown delay's timing: the server's own runner and lifecycle,
  checked in process in tests/ops/drain/test_in_process.py.)
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
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from harness.load import describe, descendants, find_engine_core, wait_all_gone
from harness.server import RunningServer, servers_started_together
from harness.sse import SSEEvent
from harness.streams import StreamRecord, read_stream

pytestmark = pytest.mark.engine

STREAMS = 3
SIGTERM_DRAIN_S = 30.0
# The server each test needs, by test name.
SERVER_ARGS = {
    "test_sigterm_lets_in_flight_streams_finish_then_exits_0":
        ("--drain-timeout", str(SIGTERM_DRAIN_S), "--shutdown-delay", "5"),
    "test_a_dead_engine_turns_probes_503_fails_requests_and_exits_non_zero": (),
}


@pytest.fixture(scope="module")
def servers(request) -> Iterator[dict[str, RunningServer]]:
    """The servers of the tests selected in this module, started together."""
    wanted = [item.name for item in request.session.items if item.module is request.module]
    with servers_started_together({name: SERVER_ARGS[name] for name in wanted}) as launched:
        yield launched


@pytest.fixture
def server(servers, request) -> RunningServer:
    return servers[request.node.name]


def _wait_exit(server: RunningServer, timeout: float) -> int | None:
    try:
        return server.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


# --- drain ------------------------------------------------------------------------------------


async def _started(records: list[StreamRecord], timeout: float = 120) -> None:
    """Until every stream has its first content (bounded)."""
    deadline = time.monotonic() + timeout
    while not all(record.content_chunks for record in records):
        assert time.monotonic() < deadline, "the streams never started generating"
        await asyncio.sleep(0.01)


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


@dataclass
class DrainRun:
    streams: list[StreamRecord]
    plain: httpx.Response
    probes: list[tuple[float, int | str, str]]
    during_delay: httpx.Response | None
    signalled_at: float


async def _drain_under_load(
    server: RunningServer, model: str, sig: signal.Signals, max_tokens: int, *, request_during_delay: bool
) -> DrainRun:
    # Completions, not chat: no format stop string (USER:) can end a generation early.
    body = {"model": model, "prompt": "Once upon a time", "max_tokens": max_tokens, "ignore_eos": True}
    records = [StreamRecord() for _ in range(STREAMS)]
    async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
        streams = [
            asyncio.create_task(read_stream(client, "/v1/completions", {**body, "stream": True}, r)) for r in records
        ]
        plain = asyncio.create_task(client.post("/v1/completions", json=body))
        await _started(records)
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
    return DrainRun(records, plain_response, probes, during_delay, signalled_at)


def test_sigterm_lets_in_flight_streams_finish_then_exits_0(server):
    drain_timeout = SIGTERM_DRAIN_S
    children = descendants(server.process.pid)
    run = asyncio.run(_drain_under_load(server, server.model, signal.SIGTERM, 120, request_during_delay=True))
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
        assert record.ok and record.saw_done and record.error is None, record
        assert record.finish_reasons == ["length"]
    assert run.plain.status_code == 200 and run.plain.json()["choices"][0]["finish_reason"] == "length"
    assert code == 0, f"exit code {code}:\n{server.log_text()[-3000:]}"
    assert exit_after < drain_timeout + 30
    assert not orphans, describe(orphans)


# --- engine death -----------------------------------------------------------------------------


async def _kill_engine_under_load(server: RunningServer, model: str) -> dict:
    body = {"model": model, "prompt": "Once upon a time", "max_tokens": 4000, "ignore_eos": True}
    records = [StreamRecord(), StreamRecord()]
    events: list[list[SSEEvent]] = [[], []]
    ended: dict[str, float] = {}

    async def stream(client: httpx.AsyncClient, index: int) -> list[SSEEvent]:
        await read_stream(client, "/v1/completions", {**body, "stream": True}, records[index], events=events[index])
        ended[f"stream{index}"] = time.monotonic()
        return events[index]

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
        tasks = [asyncio.create_task(stream(client, index)) for index in range(len(records))]
        tasks.append(asyncio.create_task(plain(client)))
        await _started(records)
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
    run = asyncio.run(_kill_engine_under_load(server, server.model))
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
