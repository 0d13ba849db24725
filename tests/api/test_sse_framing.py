"""Every byte of a long stream is ours: `data: <json>` events and `: keep-alive` comments.

sse-starlette sends a ping of its own every 15 s (`: ping` with CRLF line ends) unless the
server's own ping replaces it; a stream shorter than that cannot tell. Here a chat stream and a
completions stream each run about 16 s, through a real uvicorn on loopback, from a fake engine
that writes a token every 0.5 s (tests/support/inprocess.py), and the raw bytes are checked:
only our two kinds of frame, `\\n\\n`-separated, no `\\r`, keep-alive comments every
`sse_ping_seconds` (5 s) while tokens flow, and the stream's end.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from harness.fake_engine import FakeAsyncLLM
from tests.support.inprocess import FAKE_MODEL, serving_fake

REPLY = "abcdefghijklmnopqrstuvwxyz0123456"  # 33 tokens, one every 0.5 s: about 16 s
TOKEN_DELAY_S = 0.5
PING_S = 5.0


async def raw_stream(base_url: str, path: str, body: dict) -> tuple[bytes, float]:
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        async with client.stream("POST", path, json={**body, "stream": True}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            raw = b"".join([chunk async for chunk in response.aiter_raw()])
    return raw, time.monotonic() - started


@pytest.fixture(scope="module")
def long_streams() -> dict[str, tuple[bytes, float]]:
    with serving_fake(FakeAsyncLLM(reply=REPLY, token_delay_s=TOKEN_DELAY_S), sse_ping_seconds=PING_S) as server:

        async def both():
            return await asyncio.gather(
                raw_stream(server.base_url, "/v1/chat/completions",
                           {"model": FAKE_MODEL, "messages": [{"role": "user", "content": "Hi"}]}),
                raw_stream(server.base_url, "/v1/completions",
                           {"model": FAKE_MODEL, "prompt": "Hi", "max_tokens": len(REPLY)}),
            )

        chat, completion = asyncio.run(asyncio.wait_for(both(), 60))
    return {"chat": chat, "completion": completion}


@pytest.mark.parametrize("route", ["chat", "completion"])
def test_a_stream_longer_than_15_s_has_only_our_frames(long_streams, route):
    raw, seconds = long_streams[route]
    assert seconds > 15.5, f"the stream took {seconds:.1f} s: too short to meet sse-starlette's 15 s ping"
    text = raw.decode("utf-8")
    assert "\r" not in text
    assert "ping" not in text
    assert text.endswith("data: [DONE]\n\n")
    frames = text[:-2].split("\n\n")
    kinds = []
    for frame in frames:
        assert "\n" not in frame, f"a frame of more than one line: {frame!r}"
        if frame == ": keep-alive":
            kinds.append("comment")
        else:
            assert frame.startswith("data: "), f"not one of our frames: {frame!r}"
            payload = frame[len("data: "):]
            if payload != "[DONE]":
                assert json.loads(payload)["model"] == FAKE_MODEL
            kinds.append("data")
    assert kinds[0] == "comment", "the stream opens with a keep-alive comment"
    # Comments every PING_S seconds for the whole stream, tokens flowing or not.
    assert kinds.count("comment") >= 1 + int(seconds // PING_S), kinds
    written = "".join(
        (choice.get("delta") or {}).get("content") or choice.get("text") or ""
        for frame in frames if frame.startswith("data: {")
        for choice in json.loads(frame[len("data: "):])["choices"]
    )
    assert written == REPLY
