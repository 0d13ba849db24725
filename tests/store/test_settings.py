"""The responses store's settings on the whole server (in process, on the fake engine): store
off, a SQLite place that cannot be written, the log, and the metrics. The stored routes on the
real engine are in tests/store/test_stored_responses.py."""

from __future__ import annotations

import uuid

import httpx
import openai
import pytest

from tests.support.inprocess import FAKE_MODEL, serving_fake


def sdk(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_base_url, api_key="unused", max_retries=0)


def test_with_the_store_off_store_true_is_a_400_and_the_default_stores_nothing():
    with serving_fake(responses_store="none") as server:
        client = sdk(server)
        for fields, param in [({"store": True}, "store"), ({"previous_response_id": "resp_1"}, "previous_response_id")]:
            with pytest.raises(openai.BadRequestError) as caught:
                client.responses.create(model=FAKE_MODEL, input="Hi", max_output_tokens=2, **fields)
            assert caught.value.body["param"] == param and "--responses-store none" in caught.value.message
        response = client.responses.create(model=FAKE_MODEL, input="Hi", max_output_tokens=2)
        assert response.store is False
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(response.id)


def test_a_sqlite_store_that_cannot_be_written_refuses_the_start(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with serving_fake(wait_ready=False, data_dir=blocker / "data") as server:
        for _ in range(600):  # bounded: the lifespan asks for the exit at once
            if server.exit_codes:
                break
            server.wait_stopped(0.05)
        assert server.exit_codes == [1]
    assert "responses store (sqlite file" in server.log_text() and "--responses-store" in server.log_text()


def test_stored_content_never_reaches_the_log():
    secret = f"secret-{uuid.uuid4().hex}"
    with serving_fake() as server:
        client = sdk(server)
        first = client.responses.create(model=FAKE_MODEL, input=f"Remember {secret}.", max_output_tokens=4)
        client.responses.retrieve(first.id)
        list(client.responses.input_items.list(first.id))
        client.responses.create(model=FAKE_MODEL, input="What?", previous_response_id=first.id, max_output_tokens=4)
        client.responses.delete(first.id)
        server.access_log_barrier()
        assert secret not in server.log_text()


def metric(server, name: str, labels: str = "") -> float:
    text = httpx.get(server.base_url + "/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(f"{name}{labels} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.split()[-1])
    return 0.0


def test_metrics_count_stored_responses_bytes_and_evictions():
    bound = 10_000
    with serving_fake(responses_max_bytes=bound) as server:
        client = sdk(server)
        ids = [client.responses.create(model=FAKE_MODEL, input="x" * 3000, max_output_tokens=2).id]
        one = metric(server, "airoboros_responses_stored_bytes")
        assert 2 * one <= bound < 3 * one  # room for two of these: the third evicts the first
        ids += [client.responses.create(model=FAKE_MODEL, input="x" * 3000, max_output_tokens=2).id for _ in range(2)]
        assert metric(server, "airoboros_responses_stored_bytes") <= bound
        assert metric(server, "airoboros_responses_stored") == 2
        assert metric(server, "airoboros_responses_evicted_total", '{reason="size"}') == 1
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(ids[0])
        assert client.responses.retrieve(ids[2]).id == ids[2]
        client.responses.delete(ids[2])
        assert metric(server, "airoboros_responses_stored") == 1


def test_a_stored_chain_too_long_for_the_context_is_a_400_or_fits_with_truncation_auto():
    with serving_fake() as server:
        client = sdk(server)
        long_turn = "x" * 5_000  # over half of the fake engine's context (8192 tokens)
        first = client.responses.create(model=FAKE_MODEL, input=long_turn, max_output_tokens=2)
        with pytest.raises(openai.BadRequestError) as caught:
            client.responses.create(model=FAKE_MODEL, input=long_turn, previous_response_id=first.id, max_output_tokens=2)
        assert caught.value.body["code"] == "context_length_exceeded" and caught.value.body["param"] == "input"
        fitted = client.responses.with_raw_response.create(
            model=FAKE_MODEL, input=long_turn, previous_response_id=first.id, max_output_tokens=2, truncation="auto",
        )
        assert int(fitted.headers["X-Airoboros-Dropped-Messages"]) >= 1
        assert fitted.parse().truncation == "auto"
