"""Per-chunk CPU cost of each layer of our streaming path, in-process, with a fake engine.

No model and no sockets: the tests' fake vLLM engine (harness/fake_engine.py) writes N
one-token DELTA outputs, each one as soon as the consumer has taken the previous one (it yields
to the event loop once per token, as a real engine's outputs find their consumer waiting), and
each layer the server puts between vLLM's AsyncLLM and the socket is timed alone, on uvloop (as
uvicorn runs it). The numbers are microseconds per streamed chunk, one chunk being one token
here, so they add up to the front end's own cost per token; compare them with the front-end CPU
per 1,000 tokens that `python -m bench` measures on the real server. Subtract the first line
(the fake engine alone) from the others.

    python -m bench.frontend_micro [--chunks 20000]

Layers, each including the ones before it:
- `run_generation`: one engine request's loop (deadline timer, drain and engine death);
- `Generation.stream`: choice assembly (the output shaper's stop-string hold-back, token counts)
  and the chat encoder's frames, as the chat route runs it;
- `dumps` / `data_frame`: JSON of one chunk and its SSE framing, alone;
- `sse-starlette`: EventSourceResponse's per-event send against a bare ASGI loop that sends the
  same bytes;
- middlewares: the three pure-ASGI wrappers every `send` passes through.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

REQUEST_ID = "bench"


def per_chunk_us(seconds: float, chunks: int) -> float:
    return 1e6 * seconds / chunks


async def time_async(make: Any, chunks: int) -> float:
    started = time.process_time()
    await make()
    return per_chunk_us(time.process_time() - started, chunks)


async def measure(chunks: int) -> dict[str, float]:
    from prometheus_client import CollectorRegistry

    from prompt_formats import get_format
    from server.api.services.chat import ChatService
    from server.api.encoders.chat import ChatEncoder
    from server.api.encoders.frames import data_frame, dumps
    from server.api.middleware import ApiKeyMiddleware, BodyLimitMiddleware, RequestContextMiddleware
    from server.api.protocol.requests import ChatCompletionRequest
    from server.api.sse import sse_response
    from server.generation import Generation, Interruptions, Outcome, run_generation
    from server.metrics import Metrics
    from server.settings import Settings
    from harness.fake_engine import FakeAsyncLLM, fake_engine

    llm = FakeAsyncLLM(reply=" word", max_model_len=chunks + 1024)  # room for every chunk
    engine = fake_engine(llm)
    settings = Settings()
    metrics = Metrics(CollectorRegistry())
    results: dict[str, float] = {}
    request = ChatCompletionRequest(
        model="fake-model", messages=[{"role": "user", "content": "Hello there"}], max_tokens=chunks,
        stream=True, stream_options={"include_usage": True}, temperature=0, ignore_eos=True,
    )
    prepared = ChatService(settings, get_format("airoboros")).prepare(request, engine)
    (prompt,) = prepared.prompts

    async def bare() -> None:
        async for _ in llm.generate({"prompt_token_ids": prompt.token_ids}, prompt.params, "bare"):
            pass

    async def loop() -> None:
        async for _ in run_generation(engine, prompt, "loop", deadline=time.monotonic() + 600,
                                      interruptions=Interruptions()):
            pass

    results["fake engine alone"] = await time_async(bare, chunks)
    results["run_generation (+ fake engine)"] = await time_async(loop, chunks)

    frames: list[bytes] = []

    async def stream() -> None:
        outcome = Outcome(route="/v1/chat/completions", request_id=REQUEST_ID, metrics=metrics,
                          deadline=time.monotonic() + 600)
        encoder = ChatEncoder(request_id=REQUEST_ID, model="fake-model", n=1, outcome=outcome,
                              token_text=engine.token_text, include_usage=True)
        async for frame in Generation(engine, prepared, encoder, outcome, Interruptions()).stream():
            frames.append(frame)

    results["Generation.stream, chat (+ run_generation + engine)"] = await time_async(stream, chunks)
    results["(frames Generation.stream sent)"] = float(len(frames))

    body = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": "fake-model",
            "choices": [{"index": 0, "delta": {"content": " word"}, "logprobs": None, "finish_reason": None}]}
    started = time.process_time()
    for _ in range(chunks):
        dumps({**body, "choices": body["choices"]})
    results["json dumps of one chunk"] = per_chunk_us(time.process_time() - started, chunks)
    text = dumps(body)
    started = time.process_time()
    for _ in range(chunks):
        data_frame(text)
    results["data_frame"] = per_chunk_us(time.process_time() - started, chunks)

    encoded = [data_frame(text).encode()] * chunks

    async def receive() -> dict:
        await asyncio.Event().wait()  # the client never leaves
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        return None

    async def bare_asgi() -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for frame in encoded:
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def as_frames():
        for frame in encoded:
            yield frame

    async def sse() -> None:
        response = sse_response(as_frames(), ping_seconds=settings.sse_ping_seconds)
        await response({"type": "http", "method": "POST", "path": "/", "headers": []}, receive, send)

    results["bare ASGI send loop"] = await time_async(bare_asgi, chunks)
    results["sse_response (sse-starlette)"] = await time_async(sse, chunks)

    async def app(scope: dict, receive_: Any, send_: Any) -> None:
        await send_({"type": "http.response.start", "status": 200, "headers": []})
        for frame in encoded:
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
