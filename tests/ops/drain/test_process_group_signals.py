"""How the server stops when the stop signal reaches its whole process group (what a terminal's
Ctrl-C, dumb-init and systemd's default `KillMode=control-group` deliver), and when it is
SIGKILLed; and how it holds against hostile clients. tests/ops/drain/test_process_exit.py has the signal sent to
the server alone, and engine death.

- SIGTERM to the group with three streams in flight: 3/3 end with their finish reason, exit 0.
- SIGINT to the group: the same; a second SIGINT while a long stream still runs ends it at once
  with an error event, exit 130.
- After each: nothing on stderr but the log (no traceback, no leaked-resource warning, no process
  killed by force), the engine's processes gone within `ENGINE_GONE_S` of the drain's end (on the
  server's clock), none left in the process table.
- SIGKILL of the server: its engine processes (and everything else it started) die within seconds.
- 200 connections that send a head a byte at a time and 200 that send nothing, renewed as the
  server closes them, while a normal client sends 20 chat requests: all 20 answered at their
  usual latency, every hostile connection answered 408 and closed at the header timeout (a
  body that stalls: 408 at the body timeout; a head too large: 431).

Three servers start together before the first test; the hostile-client test shares the group
SIGTERM test's server, which only that test ends (it runs second).
"""

from __future__ import annotations

import asyncio
import datetime
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import psutil
import pytest

from harness.load import SSEEvent, alive, describe, descendants, parse_sse_line, wait_all_gone
from harness.server import RunningServer, servers_started_together

pytestmark = pytest.mark.engine

# An upper bound only: the drains here end when their short streams do.
DRAIN_S = 60.0
HEADER_TIMEOUT_S = 4.0
BODY_TIMEOUT_S = 4.0
# From "shutting the engine down" to "stopped" (after which no engine process runs), on the
# server's clock. About 4 s on a heavily loaded 2-core machine; vLLM's own clean-up (a garbage
# collection over the engine core's heap) is most of it.
ENGINE_GONE_S = 20.0
SHORT_TOKENS = 12
SERVERS = {
    "group_sigterm": (
        "--drain-timeout", str(DRAIN_S), "--header-timeout", str(HEADER_TIMEOUT_S),
        "--body-timeout", str(BODY_TIMEOUT_S),
    ),
    "group_sigint": ("--drain-timeout", str(DRAIN_S)),
    "sigkill": (),
}
SERVER_OF_TEST = {
    "test_hostile_clients_are_bounded_while_a_normal_client_is_served": "group_sigterm",
    "test_sigterm_to_the_process_group_drains_every_stream_and_exits_0_quietly": "group_sigterm",
    "test_sigint_to_the_group_drains_and_a_second_sigint_stops_at_once_with_exit_130": "group_sigint",
    "test_sigkill_of_the_server_takes_its_engine_processes_with_it": "sigkill",
}
# What a quiet stop never writes (stdout and stderr are one log here).
NOISE = ("Traceback", "Exception ignored", "leaked", "force killing", "killing engine process", " ERROR ")


@pytest.fixture(scope="module")
def servers(request) -> Iterator[dict[str, RunningServer]]:
    """The servers the tests selected in this module need, started together."""
    wanted = {SERVER_OF_TEST[item.name] for item in request.session.items if item.module is request.module}
    with servers_started_together({name: SERVERS[name] for name in sorted(wanted)}) as launched:
        yield launched


@pytest.fixture
def server(servers, request) -> RunningServer:
    return servers[SERVER_OF_TEST[request.node.name]]


def _model(server: RunningServer) -> str:
    return httpx.get(server.base_url + "/v1/models", timeout=10).json()["data"][0]["id"]


def _wait_exit(server: RunningServer, timeout: float) -> int | None:
    try:
        return server.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def _log_time(log: str, text: str) -> float:
    """The server's clock at its first log line containing `text` (our lines: asctime first)."""
    line = next((line for line in log.splitlines() if text in line and line[:2] == "20"), None)
    assert line is not None, f"no log line with {text!r}:\n{log[-3000:]}"
    return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _after(log: str, text: str) -> str:
    return log[log.index(text):] if text in log else log


def _engine_processes(children: list[psutil.Process]) -> list[psutil.Process]:
    """The engine's processes among a server's children (read while they run: a process that is
    exiting shows no command line)."""
    return [p for p in children if "VLLM" in p.name() or "EngineCore" in " ".join(_cmdline(p))]


def _check_quiet_stop(server: RunningServer, children: list[psutil.Process], engine: list[psutil.Process]) -> None:
    """Nothing but the log after the signal, the engine gone within the bound, no process left."""
    log = server.log_text()
    stop_log = _after(log, "exit signal") if "exit signal" in log else _after(log, "draining")
    assert not [word for word in NOISE if word in stop_log], stop_log[-4000:]
    engine_stop = _log_time(log, "stopped (exit code") - _log_time(log, "shutting the engine down")
    print(f"engine shut down and reaped in {engine_stop:.2f} s (server's clock)")
    assert engine_stop < ENGINE_GONE_S, f"engine stop took {engine_stop:.1f} s:\n{stop_log[-3000:]}"
    # The server reaped its engine processes before it exited; the resource tracker follows.
    assert engine and not alive(engine), describe(alive(engine))
    orphans = wait_all_gone(children, timeout=15)
    assert not orphans, describe(orphans)


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


# --- streams --------------------------------------------------------------------------------


@dataclass
class Stream:
    max_tokens: int
    events: list[SSEEvent] = field(default_factory=list)
    generating: asyncio.Event = field(default_factory=asyncio.Event)
    ended_at: float | None = None

    @property
    def finish_reasons(self) -> list[str]:
        reasons = []
        for event in self.events:
            if event.data and not event.is_done and not event.is_error:
                reasons += [c["finish_reason"] for c in event.json()["choices"] if c.get("finish_reason")]
        return reasons


async def _run_stream(client: httpx.AsyncClient, model: str, stream: Stream) -> None:
    # Completions, not chat: no stop string can end a generation early.
    body = {"model": model, "prompt": "Once upon a time", "max_tokens": stream.max_tokens, "ignore_eos": True, "stream": True}
    async with client.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            event = parse_sse_line(line)
            if event is not None:
                stream.events.append(event)
                if event.content:
                    stream.generating.set()
    stream.ended_at = time.monotonic()


def _assert_completed(stream: Stream) -> None:
    assert stream.events and stream.events[-1].is_done, stream.events[-3:]
    assert not any(event.is_error for event in stream.events), [e.data for e in stream.events if e.is_error]
    assert stream.finish_reasons == ["length"], stream.events[-3:]


# --- hostile clients ------------------------------------------------------------------------

SLOW_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
HOSTILE_EACH = 200
HOSTILE_ROUNDS = 6  # per hostile client, at most
BYTE_EVERY_S = 0.5


@dataclass
class Round:
    kind: str
    open_s: float
    response: bytes

    @property
    def status(self) -> int | None:
        parts = self.response.split(b" ", 2)
        return int(parts[1]) if self.response.startswith(b"HTTP/1.1 ") and len(parts) > 1 else None


async def _hostile(port: int, kind: str, stop: asyncio.Event, connected: list[str]) -> list[Round]:
    """Connect, then send a head a byte at a time ("slow"), a stalled body ("body") or nothing
    ("idle"), until the server answers and closes; again, until `stop` or HOSTILE_ROUNDS. Its
    kind goes into `connected` once its first connection is open."""
    rounds = []
    for _ in range(HOSTILE_ROUNDS):
        if stop.is_set():
            break
        # Timed from before the connect: the server's timer starts at its accept, which is later
        # (with hundreds of connections this loop may resume long after it).
        opened = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if not rounds:
            connected.append(kind)

        async def dribble() -> None:
            with_errors = (ConnectionError, OSError)
            try:
                if kind == "body":
                    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 500\r\n\r\n{")
                    await writer.drain()
                    return
                for byte in SLOW_HEAD if kind == "slow" else b"":
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(BYTE_EVERY_S)
            except with_errors:
                return

        sender = asyncio.create_task(dribble())
        try:
            response = await asyncio.wait_for(reader.read(), HEADER_TIMEOUT_S + 60)
        except (asyncio.TimeoutError, ConnectionError) as error:
            response = f"<{type(error).__name__}>".encode()
        rounds.append(Round(kind, time.monotonic() - opened, response))
        sender.cancel()
        writer.close()
    return rounds


async def _chat(client: httpx.AsyncClient, model: str) -> tuple[int, float]:
    started = time.monotonic()
    response = await client.post(
        "/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    )
    return response.status_code, time.monotonic() - started


async def _attack(server: RunningServer, model: str) -> dict:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
        baseline = [await _chat(client, model) for _ in range(3)]
        stop = asyncio.Event()
        kinds = ["slow"] * HOSTILE_EACH + ["idle"] * HOSTILE_EACH + ["body"] * 5
        connected: list[str] = []
        hostile = [asyncio.create_task(_hostile(server.port, kind, stop, connected)) for kind in kinds]
        # Every hostile client connected before the normal one is measured. Connecting takes
        # moments; the bound is for a CI machine that stalls for tens of seconds.
        deadline = time.monotonic() + 60
        while len(connected) < len(kinds):
            failed = [task.exception() for task in hostile if task.done() and task.exception()]
            assert not failed, f"a hostile client failed: {failed[0]!r}"
            assert time.monotonic() < deadline, f"{len(connected)} of {len(kinds)} hostile clients connected"
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 40_000)
        try:
            oversized = await asyncio.wait_for(reader.read(), 60)
        except ConnectionError as error:  # a reset that lost the answer
            oversized = f"<{type(error).__name__}>".encode()
        writer.close()
        during = [await _chat(client, model) for _ in range(20)]
        stop.set()
        rounds = [r for task in await asyncio.wait_for(asyncio.gather(*hostile), 180) for r in task]
    return {"baseline": baseline, "during": during, "rounds": rounds, "oversized": oversized}


def test_hostile_clients_are_bounded_while_a_normal_client_is_served(server):
    run = asyncio.run(_attack(server, _model(server)))
    baseline_s = max(latency for _, latency in run["baseline"])
    latencies = [round(latency, 2) for _, latency in run["during"]]
    print(f"chat latency: baseline max {baseline_s:.2f} s, under attack {latencies}")
    assert [status for status, _ in run["during"]] == [200] * 20
    assert max(latencies) < 3 * baseline_s + 5.0, (baseline_s, latencies)
    assert run["oversized"].startswith(b"HTTP/1.1 431 "), run["oversized"][:200]
    rounds: list[Round] = run["rounds"]
    for kind, timeout in (("slow", HEADER_TIMEOUT_S), ("idle", HEADER_TIMEOUT_S), ("body", BODY_TIMEOUT_S)):
        mine = [r for r in rounds if r.kind == kind]
        assert len(mine) >= (5 if kind == "body" else HOSTILE_EACH), (kind, len(mine))
        wrong = [(r.status, r.response[:80]) for r in mine if r.status != 408]
        assert not wrong, (kind, wrong[:5])
        # Closed at the timeout: never before it; after it, within what a loaded machine adds.
        times = sorted(r.open_s for r in mine)
        assert times[0] >= timeout - 0.1 and times[-1] < timeout + 15.0, (kind, times[:3], times[-3:])
    assert httpx.get(server.base_url + "/health/ready", timeout=10).status_code == 200


# --- group signals --------------------------------------------------------------------------


async def _streams_then_signals(server: RunningServer, streams: list[Stream], plan) -> float:  # noqa: ANN001
    """Run `streams`; once all generate, `plan(streams)` sends the signals; returns when the
    last stream ended. Every wait is bounded."""
    model = _model(server)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=DRAIN_S + 60) as client:
        tasks = [asyncio.create_task(_run_stream(client, model, stream)) for stream in streams]
        await asyncio.wait_for(asyncio.gather(*(s.generating.wait() for s in streams)), 120)
        await plan(streams)
        await asyncio.wait_for(asyncio.gather(*tasks), DRAIN_S + 60)
    return time.monotonic()


def _killpg(server: RunningServer, sig: signal.Signals) -> None:
    os.killpg(server.process.pid, sig)  # the launcher made the server its own group's leader


def test_sigterm_to_the_process_group_drains_every_stream_and_exits_0_quietly(server):
    children = descendants(server.process.pid)
    engine = _engine_processes(children)
    streams = [Stream(SHORT_TOKENS) for _ in range(3)]

    async def plan(_: list[Stream]) -> None:
        _killpg(server, signal.SIGTERM)

    asyncio.run(_streams_then_signals(server, streams, plan))
    code = _wait_exit(server, timeout=DRAIN_S + 60)
    for stream in streams:
        _assert_completed(stream)
    assert code == 0, f"exit code {code}:\n{server.log_text()[-3000:]}"
    _check_quiet_stop(server, children, engine)


def test_sigint_to_the_group_drains_and_a_second_sigint_stops_at_once_with_exit_130(server):
    children = descendants(server.process.pid)
    engine = _engine_processes(children)
    short = [Stream(SHORT_TOKENS) for _ in range(3)]
    long = Stream(4000)
    second_at: list[float] = []

    async def plan(streams: list[Stream]) -> None:
        _killpg(server, signal.SIGINT)  # Ctrl-C
        deadline = time.monotonic() + DRAIN_S
        while any(s.ended_at is None for s in short) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        second_at.append(time.monotonic())
        _killpg(server, signal.SIGINT)  # Ctrl-C again, while the long stream still runs

    asyncio.run(_streams_then_signals(server, [*short, long], plan))
    code = _wait_exit(server, timeout=60)
    log = server.log_text()
    for stream in short:
        _assert_completed(stream)
    # The long stream ended at once with an error event, on the server's clock and the client's.
    assert long.events[-1].is_done and long.events[-2].is_error, long.events[-3:]
    assert long.events[-2].json()["error"]["code"] == "unavailable"
    assert long.finish_reasons == []
    forced = _log_time(log, "second SIGINT")
    assert _log_time(log, '"aborted": "unavailable"') - forced < 5.0, log[-3000:]
    assert long.ended_at is not None and long.ended_at - second_at[0] < 15.0
    assert code == 130, f"exit code {code}:\n{log[-3000:]}"
    _check_quiet_stop(server, children, engine)


# --- SIGKILL --------------------------------------------------------------------------------


def test_sigkill_of_the_server_takes_its_engine_processes_with_it(server):
    children = descendants(server.process.pid)
    names = " ".join(p.name() for p in children)
    assert "EngineCore" in names and "Worker" in names, describe(children)
    server.process.kill()  # the server alone, as the OOM killer would
    killed_at = time.monotonic()
    assert _wait_exit(server, timeout=30) == -signal.SIGKILL
    orphans = wait_all_gone(children, timeout=10)
    assert not orphans, f"after {time.monotonic() - killed_at:.1f} s: {describe(orphans)}"
