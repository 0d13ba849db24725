"""The connection bounds of `server.ops.connections`, on a real uvicorn with the server's protocol
class on loopback, in front of a tiny ASGI app (this isolates the protocol: no engine needed):
a head that arrives too slowly or never gets 408 at the header timeout and is closed, a head too
large gets 431, a body too slow gets 408 while the app reads a disconnect, and a normal client on
a kept-alive connection is not cut by any of it. Each client's wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from server.ops.connections import ConnectionLimits, bounded_http_protocol
from harness.server import free_port

HEADER_TIMEOUT_S = 0.8
BODY_TIMEOUT_S = 1.2
MAX_HEADER_BYTES = 4096
READ_TIMEOUT_S = 10.0


class EchoApp:
    """Answers `ok <body length>`; records whether a request read a disconnect."""

    def __init__(self) -> None:
        self.disconnects = 0

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnects += 1
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        answer = b"ok %d" % len(body)
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(answer))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


@pytest.fixture(scope="module")
def echo_server() -> Iterator[tuple[int, EchoApp]]:
    app = EchoApp()
    port = free_port()
    limits = ConnectionLimits(HEADER_TIMEOUT_S, BODY_TIMEOUT_S, MAX_HEADER_BYTES)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=bounded_http_protocol(limits), log_config=None, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the echo server did not start"
        time.sleep(0.05)
    yield port, app
    server.should_exit = True
    thread.join(timeout=10)


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S)
    return sock


def _read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes; and when it closed (monotonic)."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data, time.monotonic()
        data += chunk


def _read_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length, read whole."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _content_length(data):
        chunk = sock.recv(65536)
        assert chunk, f"closed mid-response: {data!r}"
        data += chunk
    return data


def _content_length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def _status_and_error(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"connection: close" in head.lower(), head
    return status, json.loads(body)["error"]


def test_a_head_sent_a_byte_at_a_time_gets_408_at_the_header_timeout(echo_server):
    port, _ = echo_server
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100
    with _connect(port) as sock:
        opened = time.monotonic()

        async def dribble() -> None:
            for byte in request:  # bounded: 100-odd bytes, every 50 ms, until the server closes
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    return
                await asyncio.sleep(0.05)

        dribbler = threading.Thread(target=lambda: asyncio.run(dribble()), daemon=True)
        dribbler.start()
        response, closed = _read_until_closed(sock)
        dribbler.join(timeout=10)
    status, error = _status_and_error(response)
    assert status == 408 and error["code"] == "request_timeout"
    # Closed at the timeout, though bytes kept coming: not earlier, and not after the head's end.
    assert HEADER_TIMEOUT_S - 0.05 <= closed - opened < HEADER_TIMEOUT_S + 2.0


def test_a_connection_that_sends_nothing_gets_408_at_the_header_timeout(echo_server):
    port, _ = echo_server
    with _connect(port) as sock:
        opened = time.monotonic()
        response, closed = _read_until_closed(sock)
    assert _status_and_error(response)[0] == 408
    assert HEADER_TIMEOUT_S - 0.05 <= closed - opened < HEADER_TIMEOUT_S + 2.0


def test_a_head_larger_than_the_limit_gets_431_and_is_closed(echo_server):
    port, _ = echo_server
    with _connect(port) as sock:
        # No end of headers: the limit, not the parser, must stop it.
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (2 * MAX_HEADER_BYTES))
        opened = time.monotonic()
        response, closed = _read_until_closed(sock)
    status, error = _status_and_error(response)
    assert status == 431 and error["code"] == "request_header_fields_too_large"
    assert closed - opened < HEADER_TIMEOUT_S  # at once, not at the timeout


def test_a_head_just_under_the_limit_is_served(echo_server):
    port, _ = echo_server
    filler = b"a" * (MAX_HEADER_BYTES - 200)
    with _connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + filler + b"\r\nConnection: close\r\n\r\n")
        response, _ = _read_until_closed(sock)
    assert response.startswith(b"HTTP/1.1 200"), response[:200]


def test_a_body_that_does_not_arrive_gets_408_and_the_app_reads_a_disconnect(echo_server):
    port, app = echo_server
    disconnects_before = app.disconnects
    with _connect(port) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nonly ten b")
        sent = time.monotonic()
        response, closed = _read_until_closed(sock)
    status, error = _status_and_error(response)
    assert status == 408 and error["code"] == "request_timeout"
    assert BODY_TIMEOUT_S - 0.05 <= closed - sent < BODY_TIMEOUT_S + 2.0
    deadline = time.monotonic() + 5
    while app.disconnects == disconnects_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert app.disconnects == disconnects_before + 1


def test_a_kept_alive_connection_idle_past_the_header_timeout_still_serves_its_next_request(echo_server):
    port, _ = echo_server
    with _connect(port) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\n\r\nabc")
        first = _read_response(sock)
        # Idle between requests is keep-alive's business (uvicorn's timer), not the head's.
        time.sleep(HEADER_TIMEOUT_S * 2)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        second, _ = _read_until_closed(sock)
    assert first.startswith(b"HTTP/1.1 200") and first.endswith(b"ok 3")
    assert second.startswith(b"HTTP/1.1 200") and second.endswith(b"ok 0")
