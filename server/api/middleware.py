"""Pure ASGI middlewares: request ids and the access log, API keys, the body size limit.

They are plain ASGI callables, not Starlette's BaseHTTPMiddleware, which buffers and slows
streaming responses. Order (outermost first): request id + access log → CORS (Starlette's, only
with `--allowed-origins`) → API key → body limit.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Iterable

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import APIError, error_body
from server.metrics import Metrics

access_logger = logging.getLogger("airoboros.access")

MAX_REQUEST_ID_LENGTH = 128
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._:-]")


def sanitize_request_id(raw: str | None) -> str:
    """A client id kept only in safe characters and bounded length; a fresh one otherwise."""
    if raw:
        cleaned = _UNSAFE_ID_CHARS.sub("", raw)[:MAX_REQUEST_ID_LENGTH]
        if cleaned:
            return cleaned
    return uuid.uuid4().hex


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


async def _send_error(send: Send, error: APIError) -> None:
    # The X-Request-Id header is added by RequestContextMiddleware, which wraps these.
    body = json.dumps(error_body(error.message, error.type, error.param, error.code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def route_label(path: str) -> str:
    # Bounded label values: known API paths as they are, everything else one bucket.
    if path.startswith("/v1/models/"):
        return "/v1/models/{id}"
    if path == "/v1/responses/render":
        return path
    if path.startswith("/v1/responses/"):
        return "/v1/responses/{id}"
    if path.startswith(("/v1/", "/health", "/metrics", "/version")) or path in GUARDED_ROOT_PATHS:
        return path
    return "other"


class RequestContextMiddleware:
    """Gives every request an id (echoed as X-Request-Id) and writes one JSON access-log line."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = sanitize_request_id(_header(scope, b"x-request-id"))
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.monotonic()
        status = {"code": 500}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            path = scope.get("path", "")
            route = route_label(path)
            self.metrics.requests.labels(route, str(status["code"])).inc()
            if not path.startswith(("/health", "/metrics")):
                extra = scope["state"].get("access_log", {})
                access_logger.info(
                    json.dumps(
                        {
                            "request_id": request_id,
                            "method": scope.get("method"),
                            "path": path,
                            "status": status["code"],
                            "duration_s": round(time.monotonic() - started, 4),
                            **extra,
                        }
                    )
                )


# Guarded paths outside /v1/ (vLLM serves these at the root).
GUARDED_ROOT_PATHS = frozenset({"/tokenize", "/detokenize"})


def _is_guarded(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/") or path in GUARDED_ROOT_PATHS


class ApiKeyMiddleware:
    """Guards every path under /v1/ (by prefix, so routes added later are covered too), and
    /tokenize and /detokenize.

    Keys are compared as SHA-256 digests with `hmac.compare_digest`, against every key without
    stopping early: the time taken depends neither on where a guess goes wrong nor on its length.
    """

    def __init__(self, app: ASGIApp, keys: Iterable[str]) -> None:
        self.app = app
        self.key_digests = [hashlib.sha256(key.encode()).digest() for key in keys]

    def _authorized(self, scope: Scope) -> bool:
        header = _header(scope, b"authorization") or ""
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return False
        presented = hashlib.sha256(token.encode("latin-1")).digest()
        matched = False
        for digest in self.key_digests:
            matched |= hmac.compare_digest(presented, digest)
        return matched

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.key_digests and _is_guarded(scope.get("path", "")):
            if not self._authorized(scope):
                error = APIError(
                    401,
                    "Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'.",
                    type="authentication_error", code="invalid_api_key",
                )
                await _send_error(send, error)
                return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """413 for bodies over the limit: by Content-Length at once, or counted while reading."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> APIError:
        return APIError(
            413, f"Request body is larger than this server accepts ({self.max_bytes} bytes).",
            type="invalid_request_error", code="request_too_large",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _send_error(send, self._too_large())
            return
        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not response_started:
                await _send_error(send, self._too_large())


class _BodyTooLarge(StarletteHTTPException):
    # An HTTPException, because FastAPI turns any other error raised while it reads the
    # body into a 400 "error parsing the body"; this one reaches the 413 handler intact.
    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"Request body is larger than this server accepts ({max_bytes} bytes).")
