"""`run_generation`, the one loop over an engine request, in process on a fake vLLM engine.

Whatever its consumer does, the engine request ends: an early close or a cancellation aborts it,
the request's deadline stops it as a timeout, the drain deadline and engine death interrupt it,
and a request admitted after the drain deadline is stopped at once. The engine is the server's
real `Engine` around a fake `AsyncLLM` (harness/fake_engine.py), which aborts and dies the
way vLLM does; every run here takes well under a second.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from server.engine import EngineDead
from server.generation import EnginePrompt, GenerationInterrupted, Interruptions, run_generation
from server.generation.loop import DRAIN, ENGINE_DEAD, TIMEOUT
from harness.fake_engine import FakeAsyncLLM, fake_engine, sampling

LONG = {"max_tokens": 10_000, "ignore_eos": True}


def prompt(**fields) -> EnginePrompt:
    return EnginePrompt([10, 11, 12], "abc", sampling(**fields))


async def settle() -> None:
    """Let the aborts the loop scheduled in tasks of their own run."""
    for _ in range(5):
        await asyncio.sleep(0)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 20))


async def drain(llm: FakeAsyncLLM, request_id: str, interruptions: Interruptions, deadline_s: float = 30, **fields) -> None:
    """Run one engine request to its end, through `run_generation`, taking every output."""
    async for _ in run_generation(fake_engine(llm), prompt(**fields), request_id,
                                  deadline=time.monotonic() + deadline_s, interruptions=interruptions):
        pass


async def running(llm: FakeAsyncLLM, request_id: str, interruptions: Interruptions, **fields) -> asyncio.Task:
    """`drain` in a task, returned once its engine request is under way."""
    task = asyncio.create_task(drain(llm, request_id, interruptions, **fields))
    while len(interruptions) < 1:
        await asyncio.sleep(0.01)
    return task


def test_a_finished_request_yields_every_output_and_aborts_nothing():
    llm = FakeAsyncLLM(reply="Paris.")

    async def scenario():
        outputs = [o async for o in run_generation(
            fake_engine(llm), prompt(), "r1", deadline=time.monotonic() + 5, interruptions=Interruptions()
        )]
        await settle()
        return outputs

    outputs = run(scenario())
    assert "".join(o.outputs[0].text for o in outputs) == "Paris."
    assert outputs[-1].finished and outputs[-1].outputs[0].finish_reason == "stop"
    assert not any(o.finished for o in outputs[:-1])
    assert llm.aborted == [] and llm.running == 0


def test_a_consumer_that_stops_early_aborts_the_engine_request():
    llm = FakeAsyncLLM(token_delay_s=0.01)

    async def scenario():
        outputs = run_generation(fake_engine(llm), prompt(**LONG), "r2", deadline=time.monotonic() + 5,
                                 interruptions=Interruptions())
        async for _ in outputs:
            break  # the client left after its first token
        await outputs.aclose()
        await settle()

    run(scenario())
    (request,) = llm.started
    assert llm.aborted == [request.request_id]
    assert llm.running == 0


def test_a_cancelled_consumer_aborts_the_engine_request():
    llm = FakeAsyncLLM(token_delay_s=0.01)
    interruptions = Interruptions()

    async def scenario():
        task = await running(llm, "r3", interruptions, **LONG)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await settle()

    run(scenario())
    assert llm.aborted == [llm.started[0].request_id]
    assert llm.running == 0 and len(interruptions) == 0


def test_the_deadline_stops_the_request_as_a_timeout_and_aborts_it():
    llm = FakeAsyncLLM(token_delay_s=0.01)
    seen = []

    async def scenario():
        async for output in run_generation(fake_engine(llm), prompt(**LONG), "r4", deadline=time.monotonic() + 0.3,
                                           interruptions=Interruptions()):
            seen.append(output)

    started = time.monotonic()
    with pytest.raises(GenerationInterrupted) as stopped:
        run(scenario())
    assert stopped.value.reason == TIMEOUT and "timed out" in stopped.value.message
    assert 0.3 <= time.monotonic() - started < 2.0
    assert seen, "tokens flowed before the deadline"
    assert llm.aborted == [llm.started[0].request_id] and llm.running == 0


def test_the_drain_deadline_interrupts_running_requests():
    llm = FakeAsyncLLM(token_delay_s=0.01)
    interruptions = Interruptions()

    async def scenario():
        task = await running(llm, "r5", interruptions, **LONG)
        interruptions.interrupt_all(DRAIN)
        await task

    with pytest.raises(GenerationInterrupted) as stopped:
        run(scenario())
    assert stopped.value.reason == DRAIN and "shutting down" in stopped.value.message
    assert llm.aborted == [llm.started[0].request_id] and llm.running == 0


def test_a_request_admitted_after_the_drain_deadline_is_stopped_at_once():
    llm = FakeAsyncLLM(token_delay_s=0.01)
    interruptions = Interruptions()
    interruptions.interrupt_all(DRAIN)  # the deadline passed with nothing running

    started = time.monotonic()
    with pytest.raises(GenerationInterrupted) as stopped:
        run(drain(llm, "r6", interruptions, **LONG))
    assert stopped.value.reason == DRAIN
    assert time.monotonic() - started < 1.0
    assert llm.aborted == [llm.started[0].request_id]


def test_engine_death_ends_the_request_with_engine_dead():
    llm = FakeAsyncLLM(token_delay_s=0.01)

    async def scenario():
        async for output in run_generation(fake_engine(llm), prompt(**LONG), "r7", deadline=time.monotonic() + 30,
                                           interruptions=Interruptions()):
            if output.outputs[0].token_ids:
                llm.kill()  # vLLM's engine core died: its stream raises EngineDeadError

    with pytest.raises(EngineDead):
        run(scenario())
    assert llm.running == 0


def test_the_watchdogs_engine_death_interrupts_waiting_requests():
    # The engine died while this request waited for its first token (a long prefill).
    llm = FakeAsyncLLM(first_token_delay_s=30)
    interruptions = Interruptions()

    async def scenario():
        task = await running(llm, "r8", interruptions)
        interruptions.interrupt_all(ENGINE_DEAD)
        await task

    started = time.monotonic()
    with pytest.raises(EngineDead):
        run(scenario())
    assert time.monotonic() - started < 2.0


def test_requests_sharing_a_client_request_id_get_their_own_engine_ids():
    llm = FakeAsyncLLM(reply="ok")

    async def scenario():
        for _ in range(2):
            await drain(llm, "same-id", Interruptions())

    run(scenario())
    first, second = (request.request_id for request in llm.started)
    assert first != second and first.startswith("same-id-") and second.startswith("same-id-")


def test_deadlines_share_one_timer_and_each_request_stops_at_its_own():
    # Requests started latest-deadline first: each earlier one re-arms the single timer, and a
    # later one never delays an earlier. Requests that finish leave no timer behind.
    llm = FakeAsyncLLM(first_token_delay_s=30)
    interruptions = Interruptions()
    deadlines_s = [1.2, 0.9, 0.6, 0.3, 5.0]

    async def timed(request_id: str, deadline_s: float) -> tuple[str, float]:
        started = time.monotonic()
        with pytest.raises(GenerationInterrupted) as stopped:
            await drain(llm, request_id, interruptions, deadline_s=deadline_s, **LONG)
        assert stopped.value.reason == TIMEOUT
        return request_id, time.monotonic() - started

    async def scenario():
        tasks = [asyncio.create_task(timed(f"r{i}", d)) for i, d in enumerate(deadlines_s[:-1])]
        last = asyncio.create_task(timed("late", deadlines_s[-1]))
        results = await asyncio.gather(*tasks)
        timers = sum(1 for handle in asyncio.get_running_loop()._scheduled  # noqa: SLF001 - asyncio's own timer heap
                     if not handle.cancelled() and getattr(handle._callback, "__self__", None) is interruptions)  # noqa: SLF001
        assert len(interruptions) == 1 and not last.done()
        last.cancel()
        await settle()
        return results, timers

    results, timers = run(scenario())
    for (request_id, took), deadline_s in zip(results, deadlines_s):
        assert deadline_s - 0.05 <= took < deadline_s + 2.0, (request_id, took, deadline_s)
    assert timers == 1, f"{timers} deadline timers for the one request still running"
    assert len(interruptions) == 0
