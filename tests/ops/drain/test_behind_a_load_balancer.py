"""Replicas of the real server behind a real load balancer (nginx), under a bounded client load.

- A rolling restart done the Kubernetes way loses nothing: each replica in turn is taken out of
  the balancer (endpoint removed, config reloaded), sent SIGTERM (it drains: readiness 503 at
  once, in-flight streams run to their end, exit 0), replaced by a new one that is put back once
  /health/ready answers 200. Zero failed requests, zero truncated streams.
- A replica killed with SIGKILL under load (a node lost, an OOM kill) loses the streams it was
  sending; the balancer's retry policy (tests/support/balancer.py) saves the requests that had not
  yet been answered. The test prints both counts.

Loopback only, two replicas, load bounded in count and time.

The replicas are the real `airoboros-server serve` process (settings, signal handling, drain,
readiness, exit status) on the fake engine (tests/support/fake_serve.py), which writes a token
every 50 ms and starts in seconds: what is tested here is the server's behaviour toward a
balancer and the balancer's policy, none of which lives in vLLM, and a replacement replica is
ready in seconds instead of an engine start per step. The same drain on the real engine (in-flight
streams finish, the engine shuts down, exit 0, no process left) is tests/ops/drain/test_process_exit.py's.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections import Counter

import httpx
import pytest

from tests.support.balancer import NGINX_INSTALL_HINT, Nginx, find_nginx
from tests.support.fake_serve import fake_serve_command
from harness.server import (
    RunningServer, child_environment, free_port, served_model, start_process, stop_server, wait_until_ready,
)
from harness.streams import StreamRecord, closed_loop, read_stream

REPLICAS = 2
CONCURRENCY = 4
MAX_REQUESTS = 4000  # the load stops at whichever comes first: this count, its deadline, or `stop`
LOAD_DEADLINE_S = 600
# The manifests' value: the drain witnesses below must finish inside it, on a loaded CPU.
DRAIN_TIMEOUT_S = 45
REPLICA_ENV = {"AIROBOROS_DRAIN_TIMEOUT": str(DRAIN_TIMEOUT_S)}
PROMPT = [{"role": "user", "content": "Count to twenty."}]
# Waits for something the fleet does at once (a stream's first token, a replica's log line for
# the signal it got, requests after a kill): each ends as soon as it happens; the bound is for a
# CI machine that stalls for tens of seconds while an engine runs beside the tests.
EVENT_WAIT_S = 60
# Requests sent after the hard kill that must all succeed: about six seconds of the load's work.
AFTER_KILL_REQUESTS = 20


# --- the client load ---------------------------------------------------------------------------


class Load:
    """CONCURRENCY clients streaming chat completions through the balancer until stopped."""

    def __init__(self, base_url: str, model: str) -> None:
        self.url = f"{base_url}/v1/chat/completions"
        self.body = {"model": model, "messages": PROMPT, "max_tokens": 24, "stream": True}
        self.outcomes: list[StreamRecord] = []
        self.stop = asyncio.Event()

    async def run(self) -> list[StreamRecord]:
        timeout = httpx.Timeout(60, connect=5)
        # A new connection per request. nginx's reload (our stand-in for an endpoint update)
        # closes the old workers' idle client connections, and a request sent down one at that
        # moment fails before reaching any replica. Kubernetes' data paths (kube-proxy,
        # ingress-nginx's dynamic upstreams) change endpoints without touching client
        # connections, so that race is the stand-in's, not the fleet's. nginx keeps its own
        # keep-alive connections to the replicas.
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:

            async def one(_: int) -> None:
                self.outcomes.append(outcome := StreamRecord())  # visible to `open_on` while it runs
                await read_stream(client, self.url, self.body, outcome)

            await closed_loop(
                one, concurrency=CONCURRENCY, max_requests=MAX_REQUESTS, time_limit_s=LOAD_DEADLINE_S, stop=self.stop
            )
        return self.outcomes

    async def wait_for(self, completed: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while sum(o.kind == "ok" for o in self.outcomes) < completed:
            assert time.monotonic() < deadline, f"fewer than {completed} requests succeeded in {timeout} s"
            await asyncio.sleep(0.1)

    def open_on(self, replica: str) -> int:
        """Streams under way on `replica`: answered by it (headers in) and not yet ended."""
        return sum(1 for o in self.outcomes if o.ended is None and o.headers_at is not None and o.replica == replica)


def summary(outcomes: list[StreamRecord]) -> dict:
    kinds = Counter(o.kind for o in outcomes if o.ended is not None)
    return {
        "requests": sum(1 for o in outcomes if o.ended is not None),
        "ok": kinds["ok"],
        "failed": kinds["failed"],
        "truncated": kinds["truncated"],
        "by_replica": dict(Counter(o.replica for o in outcomes if o.ended is not None)),
    }


def problems(outcomes: list[StreamRecord]) -> list[str]:
    return [f"{o.kind} via {o.upstreams}: {o.error}" for o in outcomes if o.ended is not None and o.kind != "ok"][:20]


# --- the fleet -----------------------------------------------------------------------------------


class Fleet:
    """Replicas of the server and the balancer in front of them."""

    def __init__(self, nginx: Nginx) -> None:
        self.nginx = nginx
        self.replicas: list[RunningServer] = []

    @staticmethod
    def address(replica: RunningServer) -> str:
        return f"127.0.0.1:{replica.port}"

    def start_replicas(self, count: int) -> list[RunningServer]:
        """Start `count` replicas at once and wait until each is ready."""
        started = []
        for _ in range(count):
            port = free_port()
            started.append(start_process(fake_serve_command(port=port), port=port, env=child_environment(REPLICA_ENV), wait_ready=False))
        try:
            for replica in started:
                wait_until_ready(replica)
        except BaseException:
            for replica in started:
                stop_server(replica)
            raise
        return started

    def publish(self) -> None:
        self.nginx.set_upstreams([replica.port for replica in self.replicas])

    def stop(self) -> None:
        self.nginx.stop()
        for replica in self.replicas:
            stop_server(replica)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):
    binary = find_nginx()
    if binary is None:
        # CI runs `make test`, whose deploy-tools step installs nginx: missing there is a bug.
        pytest.fail(NGINX_INSTALL_HINT, pytrace=False)
    fleet = Fleet(Nginx(binary, tmp_path_factory.mktemp("nginx")))
    try:
        fleet.replicas = fleet.start_replicas(REPLICAS)
        fleet.nginx.start([replica.port for replica in fleet.replicas])
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture(scope="module")
def model_name(fleet: Fleet) -> str:
    return served_model(fleet.nginx.base_url)


def ensure_replicas(fleet: Fleet, count: int) -> None:
    """Bring the fleet back to `count` ready replicas (after an earlier test left it short)."""
    alive = [replica for replica in fleet.replicas if replica.process.poll() is None]
    for replica in fleet.replicas:
        if replica not in alive:
            stop_server(replica)
    fleet.replicas = alive
    if len(alive) < count:
        fleet.replicas += fleet.start_replicas(count - len(alive))
    fleet.publish()


# --- rolling restart ------------------------------------------------------------------------------


def readiness(replica: RunningServer) -> int | str:
    """What a readiness probe (a new connection each time) gets: a status, or `refused`."""
    try:
        return httpx.get(f"{replica.base_url}/health/ready", timeout=2).status_code
    except httpx.ConnectError:
        return "refused"


async def drain_witness(replica: RunningServer, model: str, record: StreamRecord) -> StreamRecord:
    """A longer stream sent straight to a replica just before its SIGTERM: the drain must let it end."""
    body = {
        "model": model, "messages": PROMPT, "max_tokens": 48, "ignore_eos": True, "stream": True,
    }
    async with httpx.AsyncClient(timeout=httpx.Timeout(DRAIN_TIMEOUT_S + 30, connect=5)) as client:
        return await read_stream(client, f"{replica.base_url}/v1/chat/completions", body, record)


async def wait_generating(records: list[StreamRecord]) -> None:
    """Until every stream has its first token (the replica is generating it), or fail."""
    deadline = time.monotonic() + EVENT_WAIT_S
    while not all(record.first_content is not None for record in records):
        ended = [record for record in records if record.ended is not None and record.first_content is None]
        assert not ended, f"a witness ended before its first token: {ended[0].error}"
        assert time.monotonic() < deadline, f"the witnesses had no token {EVENT_WAIT_S} s after they were sent"
        await asyncio.sleep(0.01)


def wait_for_log(replica: RunningServer, text: str) -> None:
    """Until the replica's log has `text` (or it exited without), bounded."""
    deadline = time.monotonic() + EVENT_WAIT_S
    while text not in replica.log_text():
        assert replica.process.poll() is None or text in replica.log_text(), (
            f"the replica exited without logging {text!r}:\n{replica.log_text()[-3000:]}"
        )
        assert time.monotonic() < deadline, f"no {text!r} in the replica's log in {EVENT_WAIT_S} s"
        time.sleep(0.02)


async def rolling_restart(fleet: Fleet, model: str) -> tuple[list[StreamRecord], list[dict]]:
    load = Load(fleet.nginx.base_url, model)
    load_task = asyncio.create_task(load.run())
    steps: list[dict] = []
    try:
        await load.wait_for(20)
        for old in list(fleet.replicas):
            step: dict = {"replica": Fleet.address(old)}
            # 1. Out of the endpoints: new requests go elsewhere; open streams carry on.
            fleet.replicas.remove(old)
            await asyncio.to_thread(fleet.publish)
            step["open_streams_at_sigterm"] = load.open_on(Fleet.address(old))
            # Two longer streams straight to the replica, so the drain has work to finish: under
            # way (generating) when the signal comes.
            records = [StreamRecord() for _ in range(2)]
            witnesses = [asyncio.create_task(drain_witness(old, model, record)) for record in records]
            await wait_generating(records)
            # 2. SIGTERM (the kubelet, after the preStop sleep): the replica drains and exits.
            sigterm_at = time.monotonic()
            old.process.send_signal(signal.SIGTERM)
            # Probed once the replica has handled the signal: its handler turns readiness off
            # first, then the drain starts and logs this line.
            await asyncio.to_thread(wait_for_log, old, "draining: ")
            step["ready_after_sigterm"] = await asyncio.to_thread(readiness, old)
            try:
                step["exit_code"] = await asyncio.to_thread(old.process.wait, DRAIN_TIMEOUT_S + 30)
            except subprocess.TimeoutExpired:
                step["exit_code"] = None
            step["exit_after_s"] = round(time.monotonic() - sigterm_at, 1)
            step["witnesses"] = [w.kind for w in await asyncio.gather(*witnesses)]
            stop_server(old)  # reaps engine children if anything is left
            # 3. A replacement (a new pod), once the old one is gone: starting it during the drain
            #    would hold three engines' memory at once on a small machine.
            (new,) = await asyncio.to_thread(fleet.start_replicas, 1)
            # 4. Into the endpoints once its readiness probe has passed.
            fleet.replicas.append(new)
            await asyncio.to_thread(fleet.publish)
            step["replacement"] = Fleet.address(new)
            steps.append(step)
            # Let the load reach the new replica before the next step.
            await load.wait_for(sum(o.kind == "ok" for o in load.outcomes) + 10)
    finally:
        load.stop.set()
        outcomes = await load_task
    return outcomes, steps


def test_rolling_restart_loses_no_request(fleet: Fleet, model_name: str, capsys) -> None:
    ensure_replicas(fleet, REPLICAS)
    outcomes, steps = asyncio.run(rolling_restart(fleet, model_name))
    result = summary(outcomes)
    with capsys.disabled():  # the numbers belong in every run's log, passing or not
        print(f"\nrolling restart of {REPLICAS} replicas under load: {result}")
        for step in steps:
            print(f"  step: {step}")
    assert len(steps) == REPLICAS
    for step in steps:
        # uvicorn closes its listening socket on SIGTERM, so a probe's new connection is refused
        # rather than answered 503: either way the replica is not ready.
        assert step["ready_after_sigterm"] in (503, "refused"), f"not ready once SIGTERM arrives: {step}"
        assert step["exit_code"] == 0, f"a drained replica exits 0: {step}"
        assert step["witnesses"] == ["ok", "ok"], f"streams in flight at SIGTERM must finish: {step}"
    assert result["failed"] == 0 and result["truncated"] == 0, problems(outcomes)
    assert result["requests"] >= 40
    # Every replacement served traffic once it was put back.
    assert all(result["by_replica"].get(step["replacement"]) for step in steps[:-1])


# --- hard kill -------------------------------------------------------------------------------------


async def hard_kill(fleet: Fleet, model: str) -> tuple[list[StreamRecord], RunningServer, float, int]:
    load = Load(fleet.nginx.base_url, model)
    load_task = asyncio.create_task(load.run())
    try:
        await load.wait_for(20)
        victim = fleet.replicas[0]
        # Wait (bounded) for streams to be under way on the victim, so the kill has something to lose.
        deadline = time.monotonic() + EVENT_WAIT_S
        while load.open_on(Fleet.address(victim)) == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        open_at_kill = load.open_on(Fleet.address(victim))
        killed_at = time.monotonic()
        # The whole process group, as a container runtime kills a container: server and engine.
        os.killpg(victim.process.pid, signal.SIGKILL)
        await asyncio.to_thread(victim.process.wait, 10)
        # The load keeps running against the survivor until AFTER_KILL_REQUESTS requests sent
        # after the kill have ended, however they ended (the assertions judge them).
        deadline = time.monotonic() + EVENT_WAIT_S
        while sum(o.started > killed_at and o.ended is not None for o in load.outcomes) < AFTER_KILL_REQUESTS:
            assert time.monotonic() < deadline, f"fewer than {AFTER_KILL_REQUESTS} requests ended after the kill"
            await asyncio.sleep(0.05)
    finally:
        load.stop.set()
        outcomes = await load_task
    return outcomes, victim, killed_at, open_at_kill


def test_hard_kill_loses_only_the_streams_in_flight_on_the_killed_replica(
    fleet: Fleet, model_name: str, capsys
) -> None:
    ensure_replicas(fleet, REPLICAS)
    outcomes, victim, killed_at, open_at_kill = asyncio.run(hard_kill(fleet, model_name))
    killed = Fleet.address(victim)
    result = summary(outcomes)
    after_kill = [o for o in outcomes if o.ended is not None and o.started > killed_at]
    lost = [o for o in outcomes if o.ended is not None and o.kind != "ok"]
    saved = [o for o in outcomes if o.kind == "ok" and len(o.upstreams) > 1 and o.upstreams[0] == killed]
    in_flight_on_killed = [
        o for o in outcomes
        if o.replica == killed and o.headers_at is not None and o.headers_at < killed_at
        and o.ended is not None and o.ended > killed_at
    ]
    report = (
        f"\nSIGKILL of one of {REPLICAS} replicas under load: {result}\n"
        f"  streams open on the killed replica at the kill: {open_at_kill} "
        f"(in flight by the client's clock: {len(in_flight_on_killed)})\n"
        f"  lost: {len(lost)} ({Counter(o.kind for o in lost)}), every one of them mid-stream on the killed replica\n"
        f"  saved by the balancer's retry (sent to the killed replica, answered by another): {len(saved)}\n"
        f"  requests started after the kill: {len(after_kill)}, "
        f"not ok: {sum(o.kind != 'ok' for o in after_kill)}"
    )
    with capsys.disabled():
        print(report)
        for line in problems(outcomes):
            print(f"  {line}")
    # The kill hit streams under way (else nothing below could fail, and the test would prove nothing).
    assert open_at_kill >= 1 and in_flight_on_killed, report
    # What is lost is exactly what no balancer can save: responses already under way.
    assert all(o.kind == "truncated" and o.replica == killed for o in lost), problems(outcomes)
    assert len(lost) <= len(in_flight_on_killed)
    # Nothing that started after the kill failed: retries and passive health checks cover it.
    assert after_kill and all(o.kind == "ok" for o in after_kill), problems(after_kill)
    fleet.replicas.remove(victim)
    stop_server(victim)
