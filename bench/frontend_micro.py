"""Per-chunk CPU cost of each layer of our streaming path, in-process, with a fake engine.

No model and no sockets: a fake engine yields N single-token DELTA outputs, each one as soon
as the consumer has taken the previous one (as a real engine's outputs find their consumer
waiting), and each layer the server puts between vLLM's AsyncLLM and the socket is timed alone, on
uvloop (as uvicorn runs it). The numbers are microseconds per streamed chunk, one chunk being
one token here, so they add up to the front end's own cost per token; compare them with the
front-end CPU per 1,000 tokens that `python -m bench` measures on the real server.

    python -m bench.frontend_micro [--chunks 20000]

Layers:
- `run_generation`: the task-per-output + asyncio.wait loop (keep-alive ticks, deadline, drain);
- `ChatService.stream`: chunk dicts, the output shaper (stop-string hold-back), metrics, JSON;
- `encode_frame`: SSE framing of one JSON payload;
- `sse-starlette`: EventSourceResponse's per-event send (a cancel scope and a debug log call
  per event) against a bare ASGI loop that sends the same bytes;
- middlewares: the three pure-ASGI wrappers every `send` passes through.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


@dataclass
class FakeCompletion:
    index: int = 0
    text: str = " word"
    token_ids: list[int] = field(default_factory=lambda: [42])
    finish_reason: str | None = None
    stop_reason: Any = None
    logprobs: Any = None


@dataclass
class FakeOutput:
    outputs: list[FakeCompletion]
    finished: bool = False

    def add(self, other: "FakeOutput", aggregate: bool) -> None:
        """vLLM's `RequestOutput.add` for one DELTA choice: text and tokens appended."""
        mine, theirs = self.outputs[0], other.outputs[0]
        mine.text += theirs.text
        mine.token_ids = mine.token_ids + theirs.token_ids
        mine.finish_reason, mine.stop_reason = theirs.finish_reason, theirs.stop_reason
        self.finished = other.finished


class FakeEngine:
    """What ChatService and run_generation use of `server.engine.Engine`."""

    def __init__(self, chunks: int) -> None:
        from server.engine import ModelInfo

        self.chunks = chunks
        self.dead = False
        # Paced like a real engine: the next output exists only once the consumer has taken the
        # previous one (`consumed` set), so every output finds its consumer waiting for it.
        self.consumed = asyncio.Event()
        self.info = ModelInfo(
            served_name="fake", aliases=(), path="/fake", max_model_len=1 << 20, vocab_size=50432,
            eos_token_id=0, bos_token_id=0, sampling_defaults={},
        )

    def tokenize(self, text: str) -> list[int]:
        return list(range(len(text.split())))

    def token_text(self, token_id: int) -> str:
        return " word"

    async def generate(self, token_ids: Any, prompt_text: Any, params: Any, request_id: str):
        last = self.chunks - 1
        self.consumed.set()
        for i in range(self.chunks):
            await self.consumed.wait()
            self.consumed.clear()
            done = i == last
            yield FakeOutput([FakeCompletion(finish_reason="length" if done else None)], finished=done)

    async def abort(self, request_id: str) -> None:
        return None


def per_chunk_us(seconds: float, chunks: int) -> float:
    return 1e6 * seconds / chunks


async def time_async(make: Any, chunks: int) -> float:
    started = time.process_time()
    await make()
    return per_chunk_us(time.process_time() - started, chunks)


async def measure(chunks: int) -> dict[str, float]:
    from prometheus_client import CollectorRegistry

    from prompt_formats import get_format
    from server.chat import ChatService
    from server.generation import run_generation
    from server.metrics import Metrics
    from server.outcome import Outcome
    from server.protocol import ChatCompletionRequest
    from server.settings import Settings
    from server.streaming import dumps, encode_frame, sse_response

    engine = FakeEngine(chunks)
    settings = Settings()
    metrics = Metrics(CollectorRegistry())
    results: dict[str, float] = {}

    async def bare() -> None:
        async for _ in engine.generate([], None, None, "x"):
            engine.consumed.set()

    async def wrapped() -> None:
        async for _ in run_generation(engine, [1], None, None, "x", tick_seconds=5.0,
                                      deadline=time.monotonic() + 600, stop_event=asyncio.Event()):
            engine.consumed.set()

    results["fake engine alone"] = await time_async(bare, chunks)
    results["run_generation (+ fake engine)"] = await time_async(wrapped, chunks)

    service = ChatService(engine, settings, get_format("airoboros"))
    request = ChatCompletionRequest(
        model="fake", messages=[{"role": "user", "content": "Hello there"}], max_tokens=chunks,
        stream=True, stream_options={"include_usage": True}, temperature=0, ignore_eos=True,
    )
    prepared = service.prepare(request)
    payloads: list[Any] = []

    async def stream() -> None:
        outcome = Outcome(route="/v1/chat/completions", request_id="bench", metrics=metrics,
                          deadline=time.monotonic() + 600, stop_event=asyncio.Event())
        async for payload in service.stream(prepared, "bench", outcome):
            payloads.append(payload)
            engine.consumed.set()

    results["ChatService.stream (+ run_generation + engine)"] = await time_async(stream, chunks)
    results["(chunks ChatService.stream sent)"] = float(len(payloads))

    body = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": "fake",
            "choices": [{"index": 0, "delta": {"content": " word"}, "logprobs": None, "finish_reason": None}]}
    started = time.process_time()
    for _ in range(chunks):
        dumps({**body, "choices": body["choices"]})
    results["json dumps of one chunk"] = per_chunk_us(time.process_time() - started, chunks)
    text = dumps(body)
    started = time.process_time()
    for _ in range(chunks):
        encode_frame(text)
    results["encode_frame"] = per_chunk_us(time.process_time() - started, chunks)

    frames = [encode_frame(text)] * chunks

    async def receive() -> dict:
        await asyncio.Event().wait()  # the client never leaves
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        return None

    async def bare_asgi() -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for frame in frames:
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def as_payloads():
        for _ in range(chunks):
            yield text

    async def sse() -> None:
        response = sse_response(as_payloads())
        await response({"type": "http", "method": "POST", "path": "/", "headers": []}, receive, send)

    results["bare ASGI send loop"] = await time_async(bare_asgi, chunks)
    results["sse_response (sse-starlette) incl. encode_frame"] = await time_async(sse, chunks)

    from server.middleware import ApiKeyMiddleware, BodyLimitMiddleware, RequestContextMiddleware

    async def app(scope: dict, receive_: Any, send_: Any) -> None:
        await send_({"type": "http.response.start", "status": 200, "headers": []})
        for frame in frames:
            await send_({"type": "http.response.body", "body": frame, "more_body": True})
        await send_({"type": "http.response.body", "body": b"", "more_body": False})

    stack = RequestContextMiddleware(ApiKeyMiddleware(BodyLimitMiddleware(app, max_bytes=1 << 20), keys=[]),
                                     metrics=metrics)
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [], "state": {}}
    results["middlewares + bare ASGI send loop"] = await time_async(lambda: stack(scope, receive, send), chunks)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.frontend_micro", description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many")
    args = parser.parse_args(argv)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    import logging

    logging.basicConfig(level=logging.INFO)  # as the server runs: debug calls are cheap no-ops
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, value in runner(measure(args.chunks)).items():
            best[name] = min(value, best.get(name, value))
    print(f"CPU microseconds per streamed chunk (best of {args.repeats}, {args.chunks} chunks):")
    for name, value in best.items():
        print(f"  {value:8.2f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
