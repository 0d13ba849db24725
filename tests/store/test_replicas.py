"""Two replicas share one PostgreSQL responses store: turn 1 on A, turn 2 on B; a cancel sent
to B stops a background response running on A.

The replicas are the real server process on the fake engine (tests/support/fake_serve.py: they
start in seconds; what this tests is the store between them, not the engine), and the database a
real PostgreSQL of the module's own (tests/support/postgres.py). B logs its prompts, so the test
sees that B's prompt holds the turn A answered.
"""

from __future__ import annotations

import time
import uuid

import httpx

import openai
import pytest

from tests.support.fake_serve import FAKE_MODEL, fake_serve_command
from tests.support.postgres import postgres_cluster
from harness.server import child_environment, free_port, start_process, stop_server, wait_until_ready


@pytest.fixture(scope="module")
def database():
    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def replicas(database):
    env = child_environment({
        "AIROBOROS_RESPONSES_STORE": database.url, "AIROBOROS_LOG_PROMPTS": "true", "AIROBOROS_FAKE_TOKEN_DELAY_S": "0.01",
    })
    started = []
    try:
        for _ in range(2):
            port = free_port()
            started.append(start_process(fake_serve_command(port=port), port=port, env=env, wait_ready=False))
        for replica in started:
            wait_until_ready(replica)
        yield started
    finally:
        for replica in started:
            stop_server(replica)


def sdk(replica) -> openai.OpenAI:
    return openai.OpenAI(base_url=replica.openai_base_url, api_key="unused", max_retries=0)


def test_turn_two_on_replica_b_continues_turn_one_from_replica_a(replicas):
    a, b = replicas
    question = f"Remember the word {uuid.uuid4().hex[:8]}."
    first = sdk(a).responses.create(model=FAKE_MODEL, input=question, max_output_tokens=4)
    request_id = f"turn-two-{uuid.uuid4().hex}"
    second = sdk(b).responses.create(
        model=FAKE_MODEL, input="Which word?", previous_response_id=first.id, max_output_tokens=4,
        extra_headers={"X-Request-Id": request_id},
    )
    prompt = b.access_log_entry(request_id)["prompt"]
    assert question in prompt and first.output_text.strip() in prompt
    assert prompt.index(question) < prompt.index("Which word?")
    assert second.usage.input_tokens > first.usage.input_tokens
    assert sdk(b).responses.retrieve(first.id).model_dump() == first.model_dump()
    assert sdk(a).responses.retrieve(second.id).previous_response_id == first.id


def test_a_response_deleted_on_one_replica_is_gone_on_the_other(replicas):
    a, b = replicas
    response = sdk(a).responses.create(model=FAKE_MODEL, input="Hi", max_output_tokens=2)
    sdk(b).responses.delete(response.id)
    with pytest.raises(openai.NotFoundError) as caught:
        sdk(a).responses.retrieve(response.id)
    assert caught.value.body["code"] == "response_not_found"


def test_with_the_database_gone_stored_requests_are_503_and_stateless_ones_work(replicas, database):
    a, _ = replicas
    client = sdk(a)
    kept = client.responses.create(model=FAKE_MODEL, input="Hi", max_output_tokens=2)
    database.stop()
    try:
        for attempt in (
            lambda: client.responses.create(model=FAKE_MODEL, input="Hi", max_output_tokens=2),
            lambda: client.responses.retrieve(kept.id),
            lambda: client.responses.create(model=FAKE_MODEL, input="And?", previous_response_id=kept.id, store=False),
        ):
            with pytest.raises(openai.InternalServerError) as caught:
                attempt()
            assert caught.value.status_code == 503 and caught.value.body["code"] == "unavailable"
        stateless = client.responses.create(model=FAKE_MODEL, input="Hi", store=False, max_output_tokens=2)
        assert stateless.status in ("completed", "incomplete") and stateless.store is False
        chat = client.chat.completions.create(model=FAKE_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
        assert chat.choices[0].message.content is not None
    finally:
        database.start()
    # Back: the next stored request connects again, no restart.
    assert client.responses.retrieve(kept.id).id == kept.id


def test_a_cancel_sent_to_b_stops_a_background_response_running_on_a(replicas):
    a, b = replicas
    # 4000 tokens (ignore_eos: the fake's reply again and again) at 10 ms a token: still
    # running when the cancel comes.
    started = sdk(a).responses.create(
        model=FAKE_MODEL, input="Hi", background=True, max_output_tokens=4000, extra_body={"ignore_eos": True}
    )
    assert sdk(b).responses.cancel(started.id).status == "cancelled"
    deadline = time.monotonic() + 60
    while 'airoboros_background_responses_total{status="cancelled"} 1.0' not in httpx.get(a.base_url + "/metrics").text:
        assert time.monotonic() < deadline, "replica A did not stop the cancelled response within 60 s"
        time.sleep(0.1)
    assert sdk(a).responses.retrieve(started.id).status == "cancelled"
