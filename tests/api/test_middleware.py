"""The middlewares every request passes (request id + access log, API key, body limit) and
HTTP keep-alive, in process: the whole app on a fake engine behind a real socket
(tests/support/inprocess.py), so raw HTTP, chunked bodies and idle connections are the wire's.

These moved here from the live default server: none of it involves the engine. What does (the
token counts an access-log line carries for a real generation) stays live in tests/ops/test_requests.py.
"""

from __future__ import annotations

import json
import re
import socket
import time

import httpx
import pytest

from tests.support.inprocess import FAKE_MODEL, serving_fake
from harness.sse import parse_sse_line

LIMIT = 4 * 1024 * 1024  # the default max_body_bytes


@pytest.fixture(scope="module")
def server():
    with serving_fake() as server:
        yield server


def _chat(content: str = "Tell me a story.", **extra) -> dict:
    return {"model": FAKE_MODEL, "messages": [{"role": "user", "content": content}], **extra}


# --- raw HTTP -------------------------------------------------------------------------------


def _raw_exchange(port: int, request: bytes, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        return _read_response(sock)


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed after {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = (headers.get(name.strip().lower(), "") + "," + value.strip()).lstrip(",")
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


# --- body size limit --------------------------------------------------------------------------


def _assert_too_large(status: int, body: bytes) -> None:
    assert status == 413
    error = json.loads(body)["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "request_too_large")


def test_a_declared_content_length_over_the_limit_is_413_before_the_body_is_read(server):
    # Headers only: the server answers without waiting for a single byte of the body.
    request = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {1024 ** 3}\r\nX-Request-Id: ops-too-large\r\n\r\n"
    ).encode()
    status, headers, body = _raw_exchange(server.port, request)
    _assert_too_large(status, body)
    assert headers["x-request-id"] == "ops-too-large"  # once, not repeated


def test_a_chunked_body_over_the_limit_is_413_counted_while_reading(server):
    payload = json.dumps(_chat("x" * (LIMIT + 256 * 1024))).encode()

    def chunks():
        for start in range(0, len(payload), 64 * 1024):
            yield payload[start:start + 64 * 1024]

    engine_requests = len(server.llm.started)
    response = httpx.post(server.base_url + "/v1/chat/completions", content=chunks(),
                          headers={"Content-Type": "application/json"}, timeout=30)
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in response.request.headers
    _assert_too_large(response.status_code, response.content)
    assert len(server.llm.started) == engine_requests  # refused before any generation


def test_a_body_under_the_limit_is_not_refused(server):
    response = httpx.post(server.base_url + "/v1/chat/completions", json=_chat("hello " * 10, max_tokens=1), timeout=30)
    assert response.status_code == 200


# --- request ids and the access log -----------------------------------------------------------


def test_a_safe_request_id_is_echoed_and_names_the_completion(server):
    request_id = "ops-trace_1.2:3"
    response = httpx.post(server.base_url + "/v1/chat/completions", json=_chat("Say hi.", max_tokens=2),
                          headers={"X-Request-Id": request_id}, timeout=30)
    assert response.headers["x-request-id"] == request_id
    assert response.json()["id"] == f"chatcmpl-{request_id}"
    with httpx.stream("POST", server.base_url + "/v1/completions",
                      json={"model": FAKE_MODEL, "prompt": "Hi", "max_tokens": 2, "stream": True},
                      headers={"X-Request-Id": request_id}, timeout=30) as stream:
        ids = {e.json()["id"] for line in stream.iter_lines()
               if (e := parse_sse_line(line)) and e.data and not e.is_done}
    assert stream.headers["x-request-id"] == request_id
    assert ids == {f"cmpl-{request_id}"}


def test_a_long_request_id_is_cut_to_128_characters(server):
    sent = "a1" * 300
    echoed = httpx.get(server.base_url + "/v1/models", headers={"X-Request-Id": sent}, timeout=10).headers["x-request-id"]
    assert echoed == sent[:128]


def test_unsafe_characters_are_removed_from_a_request_id(server):
    echoed = httpx.get(server.base_url + "/v1/models",
                       headers={"X-Request-Id": 'evil id<script>"\\/;%'}, timeout=10).headers["x-request-id"]
    assert echoed == "evilidscript"


def test_a_request_id_is_made_when_none_or_nothing_safe_is_sent(server):
    made = [
        httpx.get(server.base_url + "/v1/models", headers=headers, timeout=10).headers["x-request-id"]
        for headers in ({}, {}, {"X-Request-Id": "<>"})
    ]
    assert all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in made), made
    assert len(set(made)) == 3


def test_error_responses_carry_the_request_id(server):
    not_found = httpx.get(server.base_url + "/nowhere", headers={"X-Request-Id": "ops-err-404"}, timeout=10)
    bad_json = httpx.post(server.base_url + "/v1/chat/completions", content=b"{",
                          headers={"X-Request-Id": "ops-err-400", "Content-Type": "application/json"}, timeout=10)
    assert (not_found.status_code, not_found.headers["x-request-id"]) == (404, "ops-err-404")
    assert (bad_json.status_code, bad_json.headers["x-request-id"]) == (400, "ops-err-400")
    assert server.access_log_entry("ops-err-400")["status"] == 400


def test_the_access_log_has_one_json_line_per_request_without_prompt_or_output(server):
    marker = "walrus-kettle-42"
    response = httpx.post(server.base_url + "/v1/chat/completions", json=_chat(f"Repeat {marker}", max_tokens=6),
                          headers={"X-Request-Id": "ops-access-log"}, timeout=30)
    entry = server.access_log_entry("ops-access-log")  # waits for the line
    server.access_log_barrier()  # a second line for it, were there one, is in the log by now
    assert len(server.access_log_lines("ops-access-log")) == 1
    assert entry["status"] == 200 and entry["path"] == "/v1/chat/completions" and entry["method"] == "POST"
    assert entry["completion_tokens"] == response.json()["usage"]["completion_tokens"] == 6
    assert entry["prompt_tokens"] == response.json()["usage"]["prompt_tokens"]
    assert entry["finish_reasons"] == ["length"] and entry["aborted"] is None
    assert entry["latency_s"] > 0 and entry["ttft_s"] is not None and entry["duration_s"] >= entry["latency_s"]
    assert "prompt" not in entry and "output" not in entry
    assert marker not in server.log_text()


def test_health_and_metrics_are_not_in_the_access_log(server):
    for path in ("/health", "/health/ready", "/metrics"):
        httpx.get(server.base_url + path, headers={"X-Request-Id": f"probe{path.replace('/', '-')}"}, timeout=10)
    server.access_log_barrier()  # the probes' lines, were they written, are in the log by now
    assert "probe-health" not in server.log_text() and "probe-metrics" not in server.log_text()


# --- HTTP keep-alive --------------------------------------------------------------------------


def test_an_idle_connection_outlives_uvicorns_own_5_s_keep_alive(server):
    request = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        assert _read_response(sock)[0] == 200
        time.sleep(6.5)
        sock.sendall(request)
        assert _read_response(sock)[0] == 200
