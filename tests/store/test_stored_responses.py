"""Stored responses through the `openai` SDK on a real server and engine, with its SQLite store
in a file of the test's own: a `previous_response_id` chain renders as chat renders the same
history, retrieve, delete, input item pages, the API key, and a restart on the same file.

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


def test_after_a_restart_on_the_same_file_retrieve_and_a_follow_up_work(holder, client, server):
    first = create(client, server, input=TURNS[0], **GREEDY)
    assert holder.restart() == 0  # SIGTERM: drained, exit 0
    restarted = openai.OpenAI(base_url=holder.server.openai_base_url, api_key=API_KEY, max_retries=0)
    assert restarted.responses.retrieve(first.id).model_dump() == first.model_dump()
    follow_up = create(restarted, holder.server, input=TURNS[1], previous_response_id=first.id, **GREEDY)
    assert follow_up.usage.input_tokens > first.usage.input_tokens
    assert restarted.responses.retrieve(follow_up.id).previous_response_id == first.id
