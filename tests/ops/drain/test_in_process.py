"""The drain after SIGTERM/SIGINT, in process: the server's runner and lifecycle on a fake engine.

The signal handler (`DrainingServer.handle_exit`, called as the signal would call it), the
shutdown delay, uvicorn closing its socket, the drain deadline that interrupts what still runs,
and the lifespan's end that shuts the engine down: all the server's own code, behind a real
socket, with an engine whose pace the test sets. What needs the real process (the signal's
delivery, the exit status, no engine process left behind, vLLM's own shutdown) is checked on a
real server in tests/ops/drain/test_process_exit.py.
"""

from __future__ import annotations

import asyncio
import signal
import time

import httpx

from server.ops.state import Phase
from harness.fake_engine import FakeAsyncLLM
from tests.support.inprocess import FAKE_MODEL, InProcessServer, serving_fake
from harness.streams import StreamRecord, read_stream

STREAMS = 3
SHUTDOWN_DELAY_S = 1.0
# Waits for what comes at once (the socket closing, the server's phase): each ends as soon as it
# happens; the bound is for a CI machine that stalls for tens of seconds while an engine runs
# beside the tests.
EVENT_WAIT_S = 30
LONG = {"model": FAKE_MODEL, "prompt": "Once upon a time", "ignore_eos": True}


async def probe(base_url: str) -> int | str:
    """Readiness on a new connection: a status, or `refused` once the socket is closed."""
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=2) as client:
            return (await client.get("/health/ready")).status_code
    except httpx.TransportError:
        return "refused"


async def under_load(server: InProcessServer, sig: signal.Signals, max_tokens: int, *, during_delay: bool) -> dict:
    """STREAMS streams and one plain request under way, then `sig`; probes until refused."""
    body = {**LONG, "max_tokens": max_tokens}
    records = [StreamRecord() for _ in range(STREAMS)]
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client, \
            httpx.AsyncClient(base_url=server.base_url, timeout=30) as fresh:  # its first connection comes after the signal
        streams = [asyncio.create_task(read_stream(client, "/v1/completions", {**body, "stream": True}, r)) for r in records]
        plain = asyncio.create_task(client.post("/v1/completions", json=body))
        while not all(r.content_chunks for r in records):
            await asyncio.sleep(0.01)
        signalled_at = time.monotonic()
        server.send_signal(sig)
        probes = [(0.0, await probe(server.base_url))]
        during = None
        if during_delay:
            during = await fresh.post("/v1/completions", json={**body, "max_tokens": 2})
        while probes[-1][1] != "refused" and time.monotonic() - signalled_at < EVENT_WAIT_S:
            await asyncio.sleep(0.05)
            status = await probe(server.base_url)
            probes.append((time.monotonic() - signalled_at, status))  # when the answer (or refusal) came
        await asyncio.gather(*streams)
        plain_response = await plain
    return {
        "records": records, "plain": plain_response, "probes": probes, "during": during,
        "ends": [r.ended - signalled_at for r in records], "signalled_at": signalled_at,
    }


def test_sigterm_serves_through_the_delay_then_lets_in_flight_work_finish():
    llm = FakeAsyncLLM(token_delay_s=0.02)
    with serving_fake(llm, drain_timeout=30, shutdown_delay=SHUTDOWN_DELAY_S) as server:
        run = asyncio.run(asyncio.wait_for(under_load(server, signal.SIGTERM, 150, during_delay=True), 60))
        stopped = server.wait_stopped(15)
    statuses = [status for _, status in run["probes"]]
    assert statuses[0] == 503 and statuses[-1] == "refused" and set(statuses) <= {503, "refused"}, run["probes"]
    refused_at = next(at for at, status in run["probes"] if status == "refused")
    assert refused_at >= SHUTDOWN_DELAY_S, "the socket closed before the shutdown delay ended"
    assert run["during"] is not None and run["during"].status_code == 200  # served during the delay
    for record in run["records"]:
        assert record.ok and record.finish_reasons == ["length"], record
    assert run["plain"].status_code == 200 and run["plain"].json()["choices"][0]["finish_reason"] == "length"
    assert max(run["ends"]) > refused_at, "nothing was still streaming when the socket closed"
    assert stopped and server.exit_codes == [] and server.state.phase is Phase.STOPPED
    assert llm.shut_down and llm.aborted == []


DRAIN_STALL_S = 30.0


def test_sigint_ends_what_outlives_the_drain_timeout_with_an_error_event():
    llm = FakeAsyncLLM(token_delay_s=0.02)
    drain_timeout = 1.5
    with serving_fake(llm, drain_timeout=drain_timeout) as server:
        run = asyncio.run(asyncio.wait_for(under_load(server, signal.SIGINT, 4000, during_delay=False), 60))
        stopped = server.wait_stopped(15)
    # No shutdown delay: the socket closes at once, while the drain still runs (before the
    # deadline ended any stream).
    refused_at = next(at for at, status in run["probes"] if status == "refused")
    assert refused_at < min(run["ends"]), (run["probes"], run["ends"])
    # The deadline, not the generation's end, stopped them: never before it (the timer starts
    # after the signal, and both clocks are this process's), and long before the 4,000 tokens
    # at 20 ms (80 s) were done. The upper bound only has to tell those apart, so it leaves
    # DRAIN_STALL_S for a CI machine that stalls for tens of seconds.
    assert all(drain_timeout <= ended < drain_timeout + DRAIN_STALL_S for ended in run["ends"]), run["ends"]
    for record in run["records"]:
        assert record.saw_done and record.finish_reasons == []
        assert record.error and '"code": "unavailable"' in record.error, record.error
    assert run["plain"].status_code == 503 and run["plain"].json()["error"]["code"] == "unavailable"
    assert stopped and server.exit_codes == [] and server.state.phase is Phase.STOPPED
    assert len(llm.aborted) == STREAMS + 1 and llm.running == 0


def test_a_second_sigint_forces_the_exit():
    llm = FakeAsyncLLM(token_delay_s=0.02)
    with serving_fake(llm, drain_timeout=60) as server:

        async def two_interrupts() -> float:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
                record = StreamRecord()
                stream = asyncio.create_task(read_stream(client, "/v1/completions", {**LONG, "max_tokens": 4000, "stream": True}, record))
                while not record.content_chunks:
                    await asyncio.sleep(0.01)
                server.send_signal(signal.SIGINT)
                deadline = time.monotonic() + EVENT_WAIT_S
                while server.state.phase is not Phase.DRAINING:  # the first one handled
                    assert time.monotonic() < deadline, f"still {server.state.phase} after SIGINT"
                    await asyncio.sleep(0.01)
                server.send_signal(signal.SIGINT)  # Ctrl+C twice: no 60 s drain
                started = time.monotonic()
                await asyncio.wait_for(stream, EVENT_WAIT_S)
                return time.monotonic() - started

        waited = asyncio.run(asyncio.wait_for(two_interrupts(), 3 * EVENT_WAIT_S))
        assert server.wait_stopped(15)
    # The stream ends at once, with its error event. The bound only has to tell that from the
    # 60 s drain the second Ctrl+C cuts short, so it leaves room for CI's stalls.
    assert waited < EVENT_WAIT_S
