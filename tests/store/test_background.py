"""`background: true` on the whole server, in process, on the fake engine (a token every 50 ms,
so a long answer is still running when the test acts): poll to the end, cancel here and from
another server sharing the store, SIGTERM during one, and the stale ones a crash left.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import openai
import pytest

from server.store import StoreLimits, StoredResponse
from server.store.sqlite import sqlite_store
from harness.fake_engine import FakeAsyncLLM
from tests.support.inprocess import FAKE_MODEL, serving_fake

WAIT_S = 60.0
# 200 s at the fake's pace (ignore_eos: its reply again and again): running until the test ends it.
LONG = {"max_output_tokens": 4000, "extra_body": {"ignore_eos": True}}


def sdk(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_base_url, api_key="unused", max_retries=0)


def slow_llm() -> FakeAsyncLLM:
    return FakeAsyncLLM(token_delay_s=0.05)


def wait_for(condition, what: str):
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {WAIT_S:.0f} s")


def finished(client, response_id: str):
    response = client.responses.retrieve(response_id)
    return response if response.status not in ("queued", "in_progress") else None


def test_a_background_response_answers_at_once_and_is_polled_to_its_end(schemas):
    with serving_fake(slow_llm()) as server:
        client = sdk(server)
        started = client.responses.create(model=FAKE_MODEL, input="Hi", background=True, max_output_tokens=10)
        assert (started.status, started.background, started.output) == ("in_progress", True, [])
        schemas.assert_valid("Response", started.model_dump(exclude_unset=True, by_alias=True))
        final = wait_for(lambda: finished(client, started.id), "the background response finished")
        assert final.status in ("completed", "incomplete") and final.usage.output_tokens > 0 and final.output_text
        schemas.assert_valid("Response", final.model_dump(exclude_unset=True, by_alias=True))
        wait_for(lambda: server.state.admission.in_flight == 0, "its admission slot was given back")


def test_a_cancelled_background_response_stops_and_stays_cancelled():
    with serving_fake(slow_llm()) as server:
        client = sdk(server)
        started = client.responses.create(model=FAKE_MODEL, input="Hi", background=True, **LONG)
        assert client.responses.cancel(started.id).status == "cancelled"
        wait_for(lambda: server.state.admission.in_flight == 0, "the generation stopped")
        assert client.responses.retrieve(started.id).status == "cancelled"
        metrics = httpx.get(server.base_url + "/metrics", timeout=10).text
        assert 'airoboros_background_responses_total{status="cancelled"} 1.0' in metrics


def test_a_cancel_sent_to_another_server_stops_it_through_the_store(tmp_path):
    store = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    with serving_fake(slow_llm(), responses_store=store) as runner, serving_fake(responses_store=store) as other:
        started = sdk(runner).responses.create(model=FAKE_MODEL, input="Hi", background=True, **LONG)
        assert sdk(other).responses.cancel(started.id).status == "cancelled"
        wait_for(lambda: runner.state.admission.in_flight == 0, "the runner saw the cancel and stopped")
        assert sdk(runner).responses.retrieve(started.id).status == "cancelled"


def test_sigterm_during_a_background_response_leaves_it_incomplete_never_in_progress(tmp_path):
    path = tmp_path / "responses.sqlite3"
    with serving_fake(slow_llm(), responses_store=f"sqlite:///{path}", drain_timeout=1.0) as server:
        started = sdk(server).responses.create(model=FAKE_MODEL, input="Hi", background=True, **LONG)
        server.send_signal(signal.SIGTERM)
        assert server.wait_stopped(WAIT_S), "the server did not stop after its drain"
    store = sqlite_store(path, StoreLimits(ttl_s=1e9, max_bytes=10**9))
    record = store.get(started.id, now=time.time())
    assert record.status == "incomplete" and record.response["incomplete_details"] == {"reason": "interrupted"}
    store.close()


def test_a_response_left_running_by_a_crash_is_failed_at_the_next_start(tmp_path):
    path = tmp_path / "responses.sqlite3"
    store = sqlite_store(path, StoreLimits(ttl_s=1e9, max_bytes=10**9))
    crashed = time.time() - 600  # its last heartbeat: ten minutes ago
    response = {"id": "resp_crashed", "object": "response", "status": "in_progress", "background": True, "output": []}
    store.put(StoredResponse("resp_crashed", None, crashed, "in_progress", response, []), now=crashed, owner="gone:1")
    # It was streamed: its opening events are in the store.
    opening = [
        (seq, f'event: {kind}\ndata: {{"type":"{kind}","response":{{"id":"resp_crashed","object":"response",'
              f'"status":"in_progress","background":true,"output":[]}},"sequence_number":{seq}}}\n\n')
        for seq, kind in enumerate(["response.created", "response.in_progress"])
    ]
    assert store.append_events("resp_crashed", opening, now=crashed)
    store.close()
    with serving_fake(responses_store=f"sqlite:///{path}") as server:
        failed = sdk(server).responses.retrieve("resp_crashed")
        assert failed.status == "failed" and failed.error.code == "server_error"
        assert "left running by a stopped server" in server.log_text()
        # A client resuming its stream gets what was kept, then its end: response.failed.
        events = list(sdk(server).responses.retrieve("resp_crashed", stream=True))
        assert [event.type for event in events] == ["response.created", "response.in_progress", "response.failed"]
        assert [event.sequence_number for event in events] == [0, 1, 2]
        assert events[-1].response.status == "failed"


def test_background_without_the_store_is_a_400():
    with serving_fake() as server:
        with pytest.raises(openai.BadRequestError) as caught:
            sdk(server).responses.create(model=FAKE_MODEL, input="Hi", background=True, store=False)
        assert caught.value.body["param"] == "background"
        assert sdk(server).responses.create(model=FAKE_MODEL, input="Hi", max_output_tokens=2).status


def test_only_a_background_response_can_be_cancelled():
    with serving_fake() as server:
        client = sdk(server)
        plain = client.responses.create(model=FAKE_MODEL, input="Hi", max_output_tokens=2)
        with pytest.raises(openai.BadRequestError):
            client.responses.cancel(plain.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.cancel("resp_unknown")
