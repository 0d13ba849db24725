"""Where clients and load balancers meet the server: start-up probes, API keys, admission,
keep-alive comments, the request timeout and `--log-prompts`.

All of it is the server's own layers (lifecycle, middlewares, admission, SSE, the generation
loop), so the server runs in process on a fake vLLM engine (tests/support/inprocess.py) that
takes 1.5 s to load and half a second to a first token, behind a real socket and real clients,
with every guard on and watched from its first second: API keys from the environment and from a
key file, `max_inflight 4`, `sse_ping_seconds 0.2`, `request_timeout 2`, `log_prompts` (the
admission test has a server of its own with the same bound and key, whose request timeout cannot
free a slot while the test holds it). That the same guards hold on the real engine (the abort
reaching vLLM, the warm-up generation) is what the live tests on the real server check:
tests/ops/test_requests.py, tests/ops/drain/test_process_exit.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import openai
import pytest

from harness.fake_engine import FakeAsyncLLM
from tests.support.inprocess import InProcessServer, serving_fake
from harness.load import metric_value, parse_sse_line, wait_for_metric

ENV_KEY = "sk-ops-env-0123456789"
FILE_KEY = "sk-ops-file-9876543210"
BOUND = 4
REQUEST_TIMEOUT_S = 2.0
WARMED_LOG_LINE = "warm-up generation took"
START_TIMEOUT_S = 30.0


@dataclass
class Probe:
    at: float
    live: int | str  # a status, or "refused" before the socket listens
    ready: int | str
    ready_body: dict | None
    warmed_in_log: bool  # read after the probe answered


@dataclass
class StartupTimeline:
    probes: list[Probe] = field(default_factory=list)

    def first_ready(self) -> Probe:
        return next(p for p in self.probes if p.ready == 200)


def _status(client: httpx.Client, path: str) -> tuple[int | str, dict | None]:
    try:
        response = client.get(path)
    except httpx.TransportError:
        return "refused", None
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, None


def watch_startup(server: InProcessServer) -> StartupTimeline:
    """Probe live and ready every 50 ms from launch until ready (bounded by the start budget)."""
    timeline = StartupTimeline()
    started = time.monotonic()
    with httpx.Client(base_url=server.base_url, timeout=2) as client:
        while time.monotonic() - started < START_TIMEOUT_S:
            if not server.running:
                raise RuntimeError(f"server exited during start-up:\n{server.log_text()[-6000:]}")
            live, _ = _status(client, "/health/live")
            ready, body = _status(client, "/health/ready")
            probe = Probe(time.monotonic() - started, live, ready, body, WARMED_LOG_LINE in server.log_text())
            timeline.probes.append(probe)
            if ready == 200:
                return timeline
            time.sleep(0.05)
    raise TimeoutError(f"not ready in {START_TIMEOUT_S:.0f} s:\n{server.log_text()[-6000:]}")


@pytest.fixture(scope="module")
def guarded(tmp_path_factory) -> tuple[InProcessServer, StartupTimeline]:
    key_file = tmp_path_factory.mktemp("keys") / "api-keys"
    key_file.write_text(f"# one key per line\n\n{FILE_KEY}\n")
    llm = FakeAsyncLLM(load_delay_s=1.5, first_token_delay_s=0.5, token_delay_s=0.01)
    with serving_fake(
        llm,
        max_inflight=BOUND,
        sse_ping_seconds=0.2,
        request_timeout=REQUEST_TIMEOUT_S,
        log_prompts=True,
        api_key_file=key_file,
        api_key=ENV_KEY,
        wait_ready=False,
    ) as server:
        yield server, watch_startup(server)


@pytest.fixture(scope="module")
def server(guarded) -> InProcessServer:
    return guarded[0]


@pytest.fixture(scope="module")
def model(server) -> str:
    return server.model


def _chat(model: str, content: str, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


# --- start-up ---------------------------------------------------------------------------------


def test_live_answers_200_as_soon_as_http_listens(guarded):
    _, timeline = guarded
    answered = [p for p in timeline.probes if p.live != "refused"]
    assert answered, "the server never answered a liveness probe"
    assert all(p.live == 200 for p in answered), [p.live for p in answered]
    # Liveness answered while the model was still loading, long before readiness.
    assert answered[0].ready != 200
    assert timeline.first_ready().at - answered[0].at > 1.0


def test_ready_is_503_until_the_warm_up_generation_succeeded(guarded):
    _, timeline = guarded
    before = timeline.probes[: timeline.probes.index(timeline.first_ready())]
    assert before, "the first probe was already ready: start-up was not observed"
    assert {p.ready for p in before} <= {503, "refused"}
    # The body names the phase: loading the model, then warming up (its first generation).
    bodies = [p.ready_body for p in before if p.ready == 503]
    assert bodies[0] == {"status": "loading"} and {"status": "warming"} in bodies, bodies
    assert timeline.first_ready().warmed_in_log, "ready before the warm-up generation finished"


def test_health_alias_answers_like_live(server):
    live = httpx.get(server.base_url + "/health/live", timeout=5)
    alias = httpx.get(server.base_url + "/health", timeout=5)
    assert (alias.status_code, alias.json()) == (live.status_code, live.json()) == (200, {"status": "ready"})


# --- API keys ---------------------------------------------------------------------------------


def v1_routes(app) -> list[tuple[str, str]]:
    """Every /v1 route `app` declares, path parameters filled in."""
    routes = []
    for route in app.routes:
        path = getattr(route, "path", "")
        if path == "/v1" or path.startswith("/v1/"):
            for method in sorted(getattr(route, "methods", None) or ()):
                if method != "HEAD":
                    routes.append((method, re.sub(r"\{[^}]*\}", "some-model", path)))
    return routes


BAD_CREDENTIALS = {
    "missing": {},
    "malformed: basic scheme": {"Authorization": "Basic c2stb3BzOnNlY3JldA=="},
    "malformed: bearer without key": {"Authorization": "Bearer"},
    "malformed: key then junk": {"Authorization": f"Bearer {ENV_KEY} junk"},
    "malformed: key without scheme": {"Authorization": ENV_KEY},
    "malformed: other scheme": {"Authorization": f"Token {ENV_KEY}"},
    "wrong key": {"Authorization": "Bearer sk-wrong-key"},
    "key with a suffix": {"Authorization": f"Bearer {ENV_KEY}x"},
    "key prefix": {"Authorization": f"Bearer {ENV_KEY[:-1]}"},
}


@pytest.fixture(scope="module")
def http(server) -> httpx.Client:
    # No default headers: each call sends exactly the credentials it names.
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        yield client


def _call(http: httpx.Client, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    body = {"json": {}} if method == "POST" else {}
    return http.request(method, path, headers=headers, **body)


def test_the_guarded_routes_are_every_v1_operation_the_server_describes(server):
    # What the running server says it serves (its OpenAPI, fetched with a key), against the
    # route list the two tests below walk: none of the server's /v1 operations is left out.
    served = httpx.get(server.base_url + "/openapi.json", timeout=10).json()["paths"]
    described = {
        (method.upper(), re.sub(r"\{[^}]*\}", "some-model", path))
        for path, operations in served.items() if path.startswith("/v1/")
        for method in operations
    }
    walked = set(v1_routes(server.app))
    assert described == walked
    assert {("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("GET", "/v1/models")} <= walked


def test_every_v1_route_answers_401_without_a_valid_key(server, http):
    failures = []
    for method, path in v1_routes(server.app):
        for case, headers in BAD_CREDENTIALS.items():
            response = _call(http, method, path, headers)
            error = response.json().get("error", {}) if response.headers.get("content-type", "").startswith("application/json") else {}
            if (
                response.status_code != 401
                or error.get("type") != "authentication_error"
                or error.get("code") != "invalid_api_key"
                or set(error) != {"message", "type", "param", "code"}
                or not response.headers.get("x-request-id")
            ):
                failures.append(f"{method} {path} [{case}] -> {response.status_code} {response.text[:120]}")
    assert not failures, "\n".join(failures)


# What each /v1 route answers a caller with a right key to `_call`'s request (an empty JSON body
# for POST, `some-model` for a path parameter): the route's own answer, past the key check.
# Errors as (status, type, param, code) of the OpenAI error body; None for the one success.
RIGHT_KEY_ANSWERS: dict[tuple[str, str], tuple[int, str, str, str | None] | None] = {
    ("POST", "/v1/chat/completions"): (400, "invalid_request_error", "model", None),
    ("POST", "/v1/completions"): (400, "invalid_request_error", "model", None),
    ("POST", "/v1/chat/render"): (400, "invalid_request_error", "model", None),
    ("POST", "/v1/chat/completions/render"): (400, "invalid_request_error", "model", None),
    ("POST", "/v1/completions/render"): (400, "invalid_request_error", "model", None),
    ("POST", "/v1/responses/render"): (400, "invalid_request_error", "model", None),
    ("POST", "/v1/responses"): (400, "invalid_request_error", "model", None),
    ("GET", "/v1/responses/some-model"): (404, "not_found_error", "response_id", "response_not_found"),
    ("DELETE", "/v1/responses/some-model"): (404, "not_found_error", "response_id", "response_not_found"),
    ("GET", "/v1/responses/some-model/input_items"): (404, "not_found_error", "response_id", "response_not_found"),
    ("POST", "/v1/responses/some-model/cancel"): (404, "not_found_error", "response_id", "response_not_found"),
    ("GET", "/v1/models"): None,
    ("GET", "/v1/models/some-model"): (404, "not_found_error", "model", "model_not_found"),
}


@pytest.mark.parametrize("key", [ENV_KEY, FILE_KEY], ids=["environment key", "key-file key"])
def test_every_v1_route_accepts_a_right_key(server, http, model, key):
    routes = v1_routes(server.app)
    assert set(routes) == set(RIGHT_KEY_ANSWERS), "a /v1 route without its expected answer here"
    for method, path in routes:
        response = _call(http, method, path, {"Authorization": f"Bearer {key}"})
        where = f"{method} {path}: {response.status_code} {response.text[:200]}"
        expected = RIGHT_KEY_ANSWERS[(method, path)]
        if expected is None:
            assert response.status_code == 200, where
            body = response.json()
            assert body["object"] == "list" and [card["id"] for card in body["data"]] == [model], where
            continue
        status, type_, param, code = expected
        assert response.status_code == status, where
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], where
        assert (error["type"], error["param"], error["code"]) == (type_, param, code), where


def test_unknown_v1_paths_are_guarded_too(server):
    without_key = httpx.get(server.base_url + "/v1/not-a-route", timeout=5)
    assert without_key.status_code == 401
    assert without_key.json()["error"]["code"] == "invalid_api_key"
    with_key = httpx.get(server.base_url + "/v1/not-a-route", headers=server.headers(), timeout=5)
    assert with_key.status_code == 404
    error = with_key.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "not_found_error"


@pytest.mark.parametrize("path", ["/health", "/health/live", "/health/ready", "/metrics", "/version"])
def test_health_metrics_and_version_need_no_key(server, path):
    assert httpx.get(server.base_url + path, timeout=5).status_code == 200


# --- admission --------------------------------------------------------------------------------


async def _admission_burst(server: InProcessServer, model: str) -> dict:
    # Completions: no format stop string (USER:) can end a holder early and free its slot. The
    # holders ask for far more tokens than they will read: they keep their slots until the SDK call
    # has been answered, then hang up, so a fast machine cannot finish them first and let it in.
    body = {"model": model, "prompt": "A poem about the sea:", "max_tokens": 1024, "ignore_eos": True, "stream": True}
    outcome: dict = {"answers": [], "probes": [], "sdk_error": None, "in_flight_when_full": None}
    statuses_known = asyncio.Event()
    sdk_answered = asyncio.Event()
    known = {"count": 0}
    stop_probing = asyncio.Event()
    sdk = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key=ENV_KEY, max_retries=0)

    async def one(client: httpx.AsyncClient) -> None:
        async with client.stream("POST", "/v1/completions", json=body) as response:
            answer = {"status": response.status_code, "retry_after": response.headers.get("retry-after")}
            if response.status_code == 200:
                lines = response.aiter_lines()
                answer["first_event"] = await anext(line async for line in lines if line.startswith("data: "))
            else:
                answer["body"] = json.loads(await response.aread())
            known["count"] += 1
            if known["count"] == 2 * BOUND:
                statuses_known.set()
            await sdk_answered.wait()
        outcome["answers"].append(answer)

    async def probe(client: httpx.AsyncClient) -> None:
        while not stop_probing.is_set():
            for path in ("/health/live", "/health/ready", "/metrics"):
                outcome["probes"].append((path, (await client.get(path)).status_code))
            await asyncio.sleep(0.05)

    async def sdk_call_while_full() -> None:
        await statuses_known.wait()
        try:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as scraper:
                metrics = (await scraper.get("/metrics")).text
            outcome["in_flight_when_full"] = metric_value(metrics, "airoboros_requests_in_flight")
            await sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
        except openai.RateLimitError as error:
            outcome["sdk_error"] = error
        finally:
            sdk_answered.set()

    limits = httpx.Limits(max_connections=4 * BOUND)
    async with httpx.AsyncClient(base_url=server.base_url, headers=server.headers(), timeout=60, limits=limits) as client:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as probes:
            prober = asyncio.create_task(probe(probes))
            try:
                await asyncio.wait_for(
                    asyncio.gather(*(one(client) for _ in range(2 * BOUND)), sdk_call_while_full()), 90
                )
            finally:
                stop_probing.set()
                await prober
                await sdk.close()
    return outcome


@pytest.fixture(scope="module")
def unhurried() -> Iterator[InProcessServer]:
    """The guarded server's admission bound and key, with no request timeout within reach: the
    slot holders must keep their slots however long this test's process is held up (on a loaded
    CI machine a stall outlasted the guarded server's 2 s timeout, which then freed the slots)."""
    llm = FakeAsyncLLM(first_token_delay_s=0.5, token_delay_s=0.05)
    with serving_fake(llm, max_inflight=BOUND, request_timeout=600.0, api_key=ENV_KEY) as server:
        yield server


def test_admission_lets_exactly_the_bound_in_and_429s_the_rest(unhurried):
    server, model = unhurried, unhurried.model
    outcome = asyncio.run(_admission_burst(server, model))
    answers = outcome["answers"]
    admitted = [a for a in answers if a["status"] == 200]
    refused = [a for a in answers if a["status"] == 429]
    assert (len(admitted), len(refused)) == (BOUND, BOUND), [a["status"] for a in answers]
    assert all(json.loads(a["first_event"][len("data: "):]).get("choices") for a in admitted), admitted
    for answer in refused:
        assert int(answer["retry_after"]) >= 1
        assert answer["body"]["error"]["type"] == "rate_limit_error"
        assert answer["body"]["error"]["code"] == "server_busy"
    assert outcome["in_flight_when_full"] == BOUND
    assert isinstance(outcome["sdk_error"], openai.RateLimitError), outcome
    assert int(outcome["sdk_error"].response.headers["retry-after"]) >= 1
    # The holders hung up: their slots come back, and the next request is admitted and answered.
    freed, in_flight, _ = wait_for_metric(server.base_url, "airoboros_requests_in_flight", lambda v: v == 0, 30)
    assert freed, f"{in_flight} requests still in flight 30 s after the holders left"
    after = httpx.post(
        server.openai_base_url + "/chat/completions", json=_chat(model, "Hi", max_tokens=4), headers=server.headers(), timeout=60
    )
    assert after.status_code == 200, after.text
    # Health and metrics were never throttled, before, during or after the burst.
    assert outcome["probes"] and {status for _, status in outcome["probes"]} == {200}
    assert metric_value(httpx.get(server.base_url + "/metrics").text, "airoboros_requests_rejected_total") >= BOUND + 1


# --- keep-alive comments ----------------------------------------------------------------------


def test_keepalive_comments_flow_while_the_first_token_is_delayed(server, model):
    # A long prefill: a second with no token to send.
    body = _chat(model, "Hello", max_tokens=2, stream=True)
    events = []
    with server.llm.paced(first_token_delay_s=1.0), httpx.stream(
        "POST", server.openai_base_url + "/chat/completions", json=body, headers=server.headers(), timeout=60
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            event = parse_sse_line(line)
            if event is not None:
                events.append(event)
    role = next(i for i, e in enumerate(events) if e.data and '"role":"assistant"' in e.data)
    first_token = next(i for i, e in enumerate(events) if e.content)
    comments = [e for e in events[role:first_token] if e.comment is not None]
    assert events[0].comment == "keep-alive", "a comment goes out at once"
    assert len(comments) >= 3, f"{len(comments)} comments in {events[first_token].at - events[role].at:.2f} s"
    assert {e.comment for e in comments} == {"keep-alive"}
    assert events[-1].is_done


# --- request timeout --------------------------------------------------------------------------


async def _run_past_the_timeout(server: InProcessServer, model: str) -> tuple:
    body = {"model": model, "prompt": "Once upon a time", "max_tokens": 4000, "ignore_eos": True}
    async with httpx.AsyncClient(base_url=server.openai_base_url, headers=server.headers(), timeout=60) as client:

        async def non_stream():
            started = time.monotonic()
            response = await client.post("/completions", json=body)
            return response, time.monotonic() - started

        async def stream():
            started = time.monotonic()
            async with client.stream("POST", "/completions", json={**body, "stream": True}) as response:
                events = [e async for e in _events(response)]
            return events, time.monotonic() - started

        return await asyncio.gather(non_stream(), stream())


async def _events(response: httpx.Response):
    async for line in response.aiter_lines():
        event = parse_sse_line(line)
        if event is not None:
            yield event


def test_requests_past_the_request_timeout_are_stopped_with_a_clear_error(server, model):
    (response, plain_s), (events, stream_s) = asyncio.run(_run_past_the_timeout(server, model))
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "server_error"
    assert response.json()["error"]["code"] == "timeout"
    assert "timed out" in response.json()["error"]["message"]
    # The data events: sse-starlette's ping task, on its own 0.2 s timer here, can take the send
    # lock between `[DONE]` and the response's end, and a comment is legal anywhere in SSE (the
    # per-stream ping task is what issue 28 replaces); what this test checks is how data ends.
    data = [event for event in events if event.data is not None]
    assert data[-1].is_done and data[-2].is_error
    assert data[-2].json()["error"]["code"] == "timeout"
    assert any(e.content for e in events), "the stream generated before it was stopped"
    # Stopped by the timeout, not by their end: never before it, and long before 4000 tokens at
    # 10 ms (40 s) were written. The upper bound only has to tell those apart, so it leaves room
    # for a CI machine that stalls for seconds.
    for seconds in (plain_s, stream_s):
        assert REQUEST_TIMEOUT_S <= seconds < REQUEST_TIMEOUT_S + 20
    # Both engine requests were aborted, not left generating their 4000 tokens: the abort comes
    # at once; the wait ends when it has, bounded for CI's stalls.
    both = [request.request_id for request in server.llm.started[-2:]]
    deadline = time.monotonic() + 30
    while server.llm.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.llm.running == 0 and set(both) <= set(server.llm.aborted), (both, server.llm.aborted)


# --- prompt logging ---------------------------------------------------------------------------


def test_log_prompts_puts_prompt_and_output_in_the_access_log(server, model):
    marker = "zebra-quartz-17"
    plain = httpx.post(
        server.openai_base_url + "/chat/completions",
        json=_chat(model, f"Repeat: {marker}", max_tokens=8, temperature=0),
        headers={**server.headers(), "X-Request-Id": "log-prompts-plain"}, timeout=60,
    )
    with httpx.stream(
        "POST", server.openai_base_url + "/completions",
        json={"model": model, "prompt": f"The code is {marker}.", "max_tokens": 8, "stream": True},
        headers={**server.headers(), "X-Request-Id": "log-prompts-stream"}, timeout=60,
    ) as response:
        streamed = "".join(e.content for line in response.iter_lines() if (e := parse_sse_line(line)))
    chat_line = server.access_log_entry("log-prompts-plain")
    assert marker in chat_line["prompt"]
    assert chat_line["output"] == [plain.json()["choices"][0]["message"]["content"]]
    stream_line = server.access_log_entry("log-prompts-stream")
    assert stream_line["prompt"] == [f"The code is {marker}."]
    assert stream_line["output"] == [streamed]
