"""Bounds on what one HTTP connection may cost, for clients that send slowly or too much.

What uvicorn (0.3x-0.5x, httptools parser) already bounds, and is used as it is:
- open connections: `limit_concurrency` (`--max-connections`): at the limit, a new request gets
  503 at once (uvicorn's own plain-text answer) until connections close;
- idle keep-alive after a response: `timeout_keep_alive` (`--keep-alive-timeout`).
What it does not, and this protocol adds on top of uvicorn's own (a subclass: parsing, flow
control and the ASGI cycle stay uvicorn's):
- a request head (request line and headers) must arrive within `--header-timeout` seconds of
  the connection opening or of the request's first byte, else 408 and the connection closes. A
  connection that sends nothing, or a header a byte at a time, would otherwise hold its socket
  for ever: uvicorn times nothing before the first request, nor inside one;
- a request body must arrive within `--body-timeout` seconds of its head, else 408 (or, when
  the answer has already begun, the connection closes) and the request sees a disconnect;
- a request head larger than `--max-header-bytes` gets 431: httptools has no limit and keeps
  a header's name and value in memory until they end (h11's `h11_max_incomplete_event_size`
  is a limit of the h11 parser only).
Every answer here closes the connection (after a broken request the stream is out of step), the
way nginx's lingering close does: the answer, then the end of our side of the stream, then
`LINGER_S` more of reading and discarding before the socket closes. Closed at once, a socket with
the client's bytes still arriving is reset, and the reset destroys the answer unread.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from http import HTTPStatus

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server.errors import error_body

logger = logging.getLogger(__name__)

LINGER_S = 2.0


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float
    body_timeout: float
    max_header_bytes: int


def http_response(status: int, message: str, code: str) -> bytes:
    """A complete HTTP/1.1 answer with an OpenAI-shaped error body that closes the connection."""
    body = json.dumps(error_body(message, "invalid_request_error", code=code)).encode()
    phrase = HTTPStatus(status).phrase
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with read timeouts and a head size limit (`limits`)."""

    limits: ConnectionLimits  # set on the class by `bounded_http_protocol`

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - uvicorn's signature
        super().__init__(*args, **kwargs)
        self._reading_head = False
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._lingering = False

    # --- the head: from the connection (or a request's first byte) to its last header ------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._reading_head:  # a later request on a kept-alive connection
            self._start_head()

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._cancel(self._head_timer)
        self._head_timer = None
        # Armed before uvicorn starts the request: a body that never ends must end too.
        self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_timed_out)
        super().on_headers_complete()

    def _start_head(self) -> None:
        self._reading_head = True
        self._head_bytes = 0
        self._cancel(self._head_timer)
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def data_received(self, data: bytes) -> None:
        # Bytes of a head that was under way before this chunk and still is after it are all
        # head (a head that began inside the chunk is counted from the next: a bound within
        # one read of the limit, never a false one).
        if self._lingering:
            return  # answered and closing: what still arrives is read and dropped
        counting = self._reading_head
        super().data_received(data)
        if counting and self._reading_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._answer_and_close(
                    431,
                    f"The request's headers exceed {self.limits.max_header_bytes} bytes.",
                    "request_header_fields_too_large",
                )

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._reading_head and not self.transport.is_closing():
            self._answer_and_close(
                408, f"The request's headers did not arrive within {self.limits.header_timeout:g} s.", "request_timeout"
            )

    # --- the body ---------------------------------------------------------------------------

    def on_message_complete(self) -> None:
        self._cancel(self._body_timer)
        self._body_timer = None
        super().on_message_complete()

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()  # too late for a status: end the connection
            return
        # uvicorn then tells the request it is disconnected, and drops whatever it answers.
        self._answer_and_close(
            408, f"The request's body did not arrive within {self.limits.body_timeout:g} s.", "request_timeout"
        )

    # --- both -------------------------------------------------------------------------------

    def _answer_and_close(self, status: int, message: str, code: str) -> None:
        logger.info("closing a connection from %s: %s", _peer(self.client), message)
        self._cancel(self._head_timer)
        self._cancel(self._body_timer)
        self._reading_head = False
        if self.cycle is not None and not self.cycle.response_complete:
            # The request reads a disconnect now; whatever it still sends is dropped (uvicorn's
            # cycle checks this flag before writing).
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.write(http_response(status, message, code))
        if self.transport.can_write_eof():
            self._lingering = True
            self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel(self._head_timer)
        self._cancel(self._body_timer)
        self._reading_head = False
        super().connection_lost(exc)

    @staticmethod
    def _cancel(timer: asyncio.TimerHandle | None) -> None:
        if timer is not None:
            timer.cancel()


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "an unknown peer"


def bounded_http_protocol(limits: ConnectionLimits) -> type[BoundedHttpProtocol]:
    """The protocol class for `uvicorn.Config(http=...)`, with these limits."""
    return type("BoundedHttpProtocol", (BoundedHttpProtocol,), {"limits": limits})
