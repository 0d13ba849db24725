"""Stored responses through the `openai` SDK on a real server and engine, with its SQLite store
in a file of the test's own: a `previous_response_id` chain renders as chat renders the same
history, retrieve, delete, input item pages, the API key, background streams left and resumed
(`starting_after`), and a restart on the same file.

One server for the module (started with `--log-prompts`, so the access log shows the prompt a
turn rendered); the restart test, last, stops it with SIGTERM and starts another on the file.
"""

from __future__ import annotations

import uuid

import httpx
import openai
import pytest

from harness.server import launch_server, stop_server

pytestmark = pytest.mark.engine

API_KEY = "stored-responses-key"
GREEDY = {"temperature": 0, "max_output_tokens": 16}
TURNS = ["Name a colour.", "Name a fruit of that colour.", "Name a country where it grows."]


class ServerHolder:
    """The module's server; the restart test replaces it."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.server = launch_server(env=env, api_key=API_KEY)

    def restart(self) -> int | None:
        code = stop_server(self.server)
        self.server = launch_server(env=self.env, api_key=API_KEY)
        return code


@pytest.fixture(scope="module")
def holder(tmp_path_factory):
    store = tmp_path_factory.mktemp("store") / "responses.sqlite3"
    running = ServerHolder({"AIROBOROS_RESPONSES_STORE": f"sqlite:///{store}", "AIROBOROS_LOG_PROMPTS": "true"})
    try:
        yield running
    finally:
        stop_server(running.server)


@pytest.fixture
def server(holder):
    return holder.server


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.openai_base_url, api_key=API_KEY, max_retries=0)


def create(client, server, request_id: str | None = None, **fields):
    return client.responses.create(
        model=server.model, extra_headers={"X-Request-Id": request_id or uuid.uuid4().hex}, **fields
    )


def test_a_three_turn_chain_renders_as_chat_renders_the_same_history(client, server):
    previous = None
    responses = []
    for question in TURNS:
        request_id = f"chain-{uuid.uuid4().hex}"
        response = create(client, server, request_id, input=question, previous_response_id=previous, **GREEDY)
        assert response.store is True and response.previous_response_id == previous
        responses.append((request_id, response))
        previous = response.id
    input_tokens = [response.usage.input_tokens for _, response in responses]
    assert input_tokens[0] < input_tokens[1] < input_tokens[2]
    history = []
    for question, (_, response) in zip(TURNS, responses):
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": response.output_text}]
    rendered = httpx.post(
        server.base_url + "/v1/chat/render", headers=server.headers(), timeout=60,
        json={"model": server.model, "messages": history[:-1]},
    ).json()
    last_request_id, last = responses[-1]
    assert last.usage.input_tokens == rendered["num_tokens"]
    assert server.access_log_entry(last_request_id)["prompt"] == rendered["prompt"]


def test_a_retrieved_response_equals_the_original(client, server):
    original = create(client, server, input="Say hello.", **GREEDY)
    assert client.responses.retrieve(original.id).model_dump() == original.model_dump()


def test_a_streamed_response_is_stored_before_its_last_event(client, server):
    events = list(create(client, server, input="Say hello.", stream=True, **GREEDY))
    final = events[-1].response
    assert client.responses.retrieve(final.id).model_dump() == final.model_dump()


def test_a_deleted_response_is_gone(client, server):
    response = create(client, server, input="Say hello.", **GREEDY)
    client.responses.delete(response.id)
    for attempt in (
        lambda: client.responses.retrieve(response.id),
        lambda: client.responses.delete(response.id),
        lambda: create(client, server, input="And?", previous_response_id=response.id, **GREEDY),
    ):
        with pytest.raises(openai.NotFoundError) as caught:
            attempt()
        assert caught.value.body["code"] == "response_not_found"
    assert create(client, server, input="Still here?", **GREEDY).status in ("completed", "incomplete")


def test_input_items_page_through_a_long_input(client, server):
    items = []
    for number in range(44):
        role = "user" if number % 2 == 0 else "assistant"
        items.append({"role": role, "content": f"Message {number}."})
    items.append({"role": "user", "content": "Which number came last?"})
    response = create(client, server, input=items, store=True, max_output_tokens=1, truncation="auto")
    first = client.responses.input_items.list(response.id, limit=10, order="asc")
    assert len(first.data) == 10 and first.has_more
    listed = list(client.responses.input_items.list(response.id, limit=10, order="asc"))  # follows `after`
    assert [item.content[0].text for item in listed] == [item["content"] for item in items]
    newest_first = list(client.responses.input_items.list(response.id, limit=100))
    assert [item.id for item in newest_first] == [item.id for item in reversed(listed)]


@pytest.mark.parametrize("limit", [0, 101])
def test_a_page_limit_out_of_range_is_a_400(client, server, limit):
    response = create(client, server, input="Hi", max_output_tokens=1)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.input_items.list(response.id, limit=limit)
    assert caught.value.body["param"] == "limit"
    assert len(client.responses.input_items.list(response.id).data) == 1


def test_stored_routes_are_behind_the_api_key(client, server):
    response = create(client, server, input="Hi", max_output_tokens=1)
    for method, path in [
        ("GET", f"/v1/responses/{response.id}"),
        ("GET", f"/v1/responses/{response.id}/input_items"),
        ("DELETE", f"/v1/responses/{response.id}"),
    ]:
        assert httpx.request(method, server.base_url + path, timeout=30).status_code == 401
    assert client.responses.retrieve(response.id).id == response.id


# A background stream long enough to leave in the middle: the stand-in never stops by itself.
LONG_STREAM = {"temperature": 0, "max_output_tokens": 48, "extra_body": {"ignore_eos": True}}


def text_of(events) -> str:
    return "".join(event.delta for event in events if event.type == "response.output_text.delta")


def test_a_background_stream_left_and_resumed_loses_and_repeats_no_event(client, server):
    stream = create(client, server, input="Count to fifty.", background=True, stream=True, **LONG_STREAM)
    before = []
    for event in stream:  # leave after the third token
        before.append(event)
        if len([e for e in before if e.type == "response.output_text.delta"]) == 3:
            break
    stream.close()
    response_id = before[0].response.id
    assert before[0].response.background is True
    after = list(client.responses.retrieve(response_id, stream=True, starting_after=before[-1].sequence_number))
    numbers = [event.sequence_number for event in before + after]
    assert numbers == list(range(len(numbers))), numbers
    # The generation went on while nobody listened, to its 48 tokens (a length stop: incomplete),
    # and the text of the events is the stored one.
    assert after[-1].type == "response.incomplete"
    final = client.responses.retrieve(response_id)
    assert final.status == "incomplete" and final.incomplete_details.reason == "max_output_tokens"
    assert final.usage.output_tokens == 48
    assert text_of(before + after) == final.output_text == after[-1].response.output_text


def test_a_finished_background_stream_replays_the_events_after_n_from_the_store(client, server):
    whole = list(create(client, server, input="Say hello.", background=True, stream=True, **GREEDY))
    response_id = whole[0].response.id
    assert whole[-1].type in ("response.completed", "response.incomplete")  # its last event
    replayed = list(client.responses.retrieve(response_id, stream=True, starting_after=4))
    assert [event.model_dump() for event in replayed] == [event.model_dump() for event in whole[5:]]
    everything = list(client.responses.retrieve(response_id, stream=True))
    assert [event.model_dump() for event in everything] == [event.model_dump() for event in whole]


def test_streaming_what_cannot_be_streamed_is_a_400_or_404(client, server):
    plain = create(client, server, input="Say hello.", **GREEDY)
    with pytest.raises(openai.BadRequestError) as not_streamed:
        list(client.responses.retrieve(plain.id, stream=True))
    assert not_streamed.value.body["param"] == "stream"
    with pytest.raises(openai.NotFoundError):
        list(client.responses.retrieve("resp_unknown", stream=True))
    with pytest.raises(openai.BadRequestError) as negative:
        list(client.responses.retrieve(plain.id, stream=True, starting_after=-2))
    assert negative.value.body["param"] == "starting_after"
    assert client.responses.retrieve(plain.id).id == plain.id  # and the next request works


def test_after_a_restart_on_the_same_file_retrieve_and_a_follow_up_work(holder, client, server):
    first = create(client, server, input=TURNS[0], **GREEDY)
    streamed = list(create(client, server, input="Say hello.", background=True, stream=True, **GREEDY))
    assert holder.restart() == 0  # SIGTERM: drained, exit 0
    restarted = openai.OpenAI(base_url=holder.server.openai_base_url, api_key=API_KEY, max_retries=0)
    assert restarted.responses.retrieve(first.id).model_dump() == first.model_dump()
    # A background stream is resumed from the store by another process (as by another replica).
    resumed = list(restarted.responses.retrieve(streamed[0].response.id, stream=True, starting_after=2))
    assert [event.model_dump() for event in resumed] == [event.model_dump() for event in streamed[3:]]
    follow_up = create(restarted, holder.server, input=TURNS[1], previous_response_id=first.id, **GREEDY)
    assert follow_up.usage.input_tokens > first.usage.input_tokens
    assert restarted.responses.retrieve(follow_up.id).previous_response_id == first.id
