"""Two replicas behind nginx share one PostgreSQL responses store: turn 1 lands on one replica and
turn 2 on the other; a cancel sent to the other replica stops a background response running on
the first; a background stream left on one replica is resumed through the other.

The replicas are the real server process on the fake engine (tests/support/fake_serve.py: they
start in seconds; what this tests is the store between them, not the engine), the balancer is
Debian's nginx as in the load-balancer tests (tests/support/balancer.py: round-robin, and an
`X-Upstream` header naming the replica that answered), and the database a real PostgreSQL of the
module's own (tests/support/postgres.py). The replicas log their prompts, so the test sees that
the second replica's prompt holds the turn the first answered.
"""

from __future__ import annotations

import time
import uuid

import httpx

import openai
import pytest

from harness.server import child_environment, free_port, start_process, stop_server, wait_until_ready
from tests.support.balancer import NGINX_INSTALL_HINT, Nginx, find_nginx
from tests.support.fake_serve import FAKE_MODEL, fake_serve_command
from tests.support.postgres import postgres_cluster

# nginx alternates between the two replicas; a few tries find the other one whatever the order.
TRIES_FOR_THE_OTHER_REPLICA = 4


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


@pytest.fixture(scope="module")
def balancer(replicas, tmp_path_factory):
    binary = find_nginx()
    if binary is None:
        # CI runs `make test`, whose test-tools step installs nginx: missing there is a bug.
        pytest.fail(NGINX_INSTALL_HINT, pytrace=False)
    nginx = Nginx(binary, tmp_path_factory.mktemp("nginx"))
    nginx.start([replica.port for replica in replicas])
    try:
        yield nginx
    finally:
        nginx.stop()


def sdk(replica) -> openai.OpenAI:
    return openai.OpenAI(base_url=replica.openai_base_url, api_key="unused", max_retries=0)


def through(balancer: Nginx) -> openai.OpenAI:
    return openai.OpenAI(base_url=balancer.base_url + "/v1", api_key="unused", max_retries=0)


def answered_by(headers, replicas):
    """The replica that answered through nginx (its `X-Upstream`: the last address tried)."""
    port = int(headers["x-upstream"].split(",")[-1].strip().rsplit(":", 1)[1])
    (replica,) = [replica for replica in replicas if replica.port == port]
    return replica


def on_the_other_replica(send, first, replicas):
    """`send()` through nginx until the other replica than `first` answers (bounded tries)."""
    for _ in range(TRIES_FOR_THE_OTHER_REPLICA):
        raw = send()
        if answered_by(raw.headers, replicas) is not first:
            return raw, answered_by(raw.headers, replicas)
        raw.http_response.close()
    pytest.fail(f"nginx sent {TRIES_FOR_THE_OTHER_REPLICA} requests in a row to the same replica")


def test_turn_two_on_one_replica_continues_turn_one_from_the_other(replicas, balancer):
    client = through(balancer)
    question = f"Remember the word {uuid.uuid4().hex[:8]}."
    raw = client.responses.with_raw_response.create(model=FAKE_MODEL, input=question, max_output_tokens=4)
    first, a = raw.parse(), answered_by(raw.headers, replicas)
    request_id = f"turn-two-{uuid.uuid4().hex}"
    raw, b = on_the_other_replica(
        lambda: client.responses.with_raw_response.create(
            model=FAKE_MODEL, input="Which word?", previous_response_id=first.id, max_output_tokens=4,
            extra_headers={"X-Request-Id": request_id},
        ),
        a, replicas,
    )
    second = raw.parse()
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


def running_background(client, replicas, **fields):
    """A background response that is still running when the test acts on it: 4000 tokens
    (ignore_eos: the fake's reply again and again) at 10 ms a token."""
    return client.responses.with_raw_response.create(
        model=FAKE_MODEL, input="Hi", background=True, max_output_tokens=4000, extra_body={"ignore_eos": True},
        **fields,
    )


def wait_for_cancelled_counted(replica) -> None:
    deadline = time.monotonic() + 60
    while 'airoboros_background_responses_total{status="cancelled"}' not in httpx.get(replica.base_url + "/metrics").text:
        assert time.monotonic() < deadline, "the replica did not stop the cancelled response within 60 s"
        time.sleep(0.1)


def test_a_cancel_sent_to_the_other_replica_stops_a_background_response(replicas, balancer):
    client = through(balancer)
    raw = running_background(client, replicas)
    started, a = raw.parse(), answered_by(raw.headers, replicas)
    raw, _ = on_the_other_replica(lambda: client.responses.with_raw_response.cancel(started.id), a, replicas)
    assert raw.parse().status == "cancelled"
    wait_for_cancelled_counted(a)
    assert sdk(a).responses.retrieve(started.id).status == "cancelled"


def test_a_background_stream_left_on_one_replica_is_resumed_through_the_other(replicas, balancer):
    client = through(balancer)
    raw = running_background(client, replicas, stream=True)
    a = answered_by(raw.headers, replicas)
    before = []
    for event in raw.parse():  # leave after the fifth token
        before.append(event)
        if len([e for e in before if e.type == "response.output_text.delta"]) == 5:
            break
    raw.http_response.close()
    response_id, last = before[0].response.id, before[-1].sequence_number

    def resume():
        return client.responses.with_streaming_response.retrieve(response_id, stream=True, starting_after=last).__enter__()

    resumed, b = on_the_other_replica(resume, a, replicas)
    after = []
    for event in resumed.parse():  # B follows A's stream through the store
        after.append(event)
        if len(after) == 20:
            break
    resumed.close()
    numbers = [event.sequence_number for event in before + after]
    assert numbers == list(range(len(numbers))), numbers
    assert b is not a and all(event.type == "response.output_text.delta" for event in after)
    assert sdk(b).responses.cancel(response_id).status == "cancelled"  # leave nothing running
