"""What storing a response costs, and what `previous_response_id` costs at the first token.

    .venv/bin/python -m bench.responses_store store [--postgres URL] [--writes 2000]
    .venv/bin/python -m bench.responses_store ttft --url http://127.0.0.1:8000 [--rounds 5]

`store`: one `put` of a typical stored response (a 2 kB input, a 1 kB answer) on the store's own
thread, as a request awaits it (`StoreArchive.save`: the thread hop included), into a SQLite
file under a temporary directory and, with `--postgres`, into that database; p50 and p99.

`ttft`: a conversation of a few turns continued two ways against a running server (its store
on): the new turn with `previous_response_id`, and the same history sent whole in `input`.
Both are streamed; the time to the first `response.output_text.delta` is reported, median of
`--rounds`, each round under a fresh nonce so the first call of each pair is not cached by the
other (the previous_response_id turn goes first, then the whole one, then the order reversed).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from prometheus_client import CollectorRegistry


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def typical_record(number: int):
    from server.store import StoredResponse

    response_id = f"resp_{uuid.uuid4().hex}"
    answer = "A stored answer. " * 60
    return StoredResponse(
        id=response_id, previous_id=None, created_at=time.time(), status="completed",
        response={"id": response_id, "object": "response", "status": "completed", "output": [
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": answer}]}]},
        input_items=[{"id": f"msg_{number}", "type": "message", "role": "user",
                      "content": [{"type": "input_text", "text": "A question of some length. " * 75}]}],
    )


async def time_writes(store, writes: int) -> list[float]:
    from server.metrics import Metrics
    from server.store import StoreArchive

    archive = StoreArchive(store, Metrics(CollectorRegistry()), "bench")
    await archive.open()
    seconds = []
    for number in range(writes):
        record = typical_record(number)
        started = time.perf_counter()
        await archive.save(record)
        seconds.append(time.perf_counter() - started)
    await archive.close()
    return seconds


def bench_store(args: argparse.Namespace) -> None:
    from server.store import StoreLimits
    from server.store.postgres import postgres_store
    from server.store.sqlite import sqlite_store

    limits = StoreLimits(ttl_s=30 * 24 * 3600.0, max_bytes=1024**3)
    stores = {"sqlite": sqlite_store(Path(tempfile.mkdtemp()) / "responses.sqlite3", limits)}
    if args.postgres:
        stores["postgresql"] = postgres_store(args.postgres, limits)
    for name, store in stores.items():
        seconds = asyncio.run(time_writes(store, args.writes))
        print(f"{name:10s} put: p50 {percentile(seconds, 0.5) * 1000:.2f} ms, "
              f"p99 {percentile(seconds, 0.99) * 1000:.2f} ms ({args.writes} writes)")


def first_delta(client, model: str, **fields) -> tuple[float, str]:
    started = time.perf_counter()
    seconds, response_id = float("nan"), ""
    for event in client.responses.create(model=model, stream=True, temperature=0, max_output_tokens=8, **fields):
        if event.type == "response.output_text.delta" and seconds != seconds:
            seconds = time.perf_counter() - started
        if event.type in ("response.completed", "response.incomplete"):
            response_id = event.response.id
    return seconds, response_id


def bench_ttft(args: argparse.Namespace) -> None:
    import openai

    client = openai.OpenAI(base_url=args.url.rstrip("/") + "/v1", api_key=args.api_key, max_retries=0)
    model = client.models.list().data[0].id
    chained, whole = [], []
    for round_number in range(args.rounds):
        nonce = uuid.uuid4().hex[:8]
        history: list[dict] = []
        previous = None
        for turn in range(args.turns):
            question = f"[{nonce}] Turn {turn}: tell me one fact about the number {turn * 7 + 3}."
            response = client.responses.create(
                model=model, input=question, previous_response_id=previous, temperature=0, max_output_tokens=48,
            )
            history += [{"role": "user", "content": question}, {"role": "assistant", "content": response.output_text}]
            previous = response.id
        final = "And one more fact about the number 42?"
        runs = [
            ("chained", lambda: first_delta(client, model, input=final, previous_response_id=previous)),
            ("whole", lambda: first_delta(client, model, input=[*history, {"role": "user", "content": final}])),
        ]
        if round_number % 2:
            runs.reverse()
        for name, run in runs:
            seconds, _ = run()
            (chained if name == "chained" else whole).append(seconds)
    print(f"TTFT, {args.turns} stored turns then a new one, median of {args.rounds}: "
          f"previous_response_id {statistics.median(chained) * 1000:.0f} ms, "
          f"whole history {statistics.median(whole) * 1000:.0f} ms")
    print("  previous_response_id:", " ".join(f"{s * 1000:.0f}" for s in chained))
    print("  whole history:       ", " ".join(f"{s * 1000:.0f}" for s in whole))
    import httpx

    metrics = httpx.get(args.url.rstrip("/") + "/metrics", timeout=10).text
    for line in metrics.splitlines():
        if line.startswith('airoboros_responses_store_seconds_') and 'operation="chain"' in line and "_bucket" not in line:
            print(" ", line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    store = commands.add_parser("store")
    store.add_argument("--postgres", help="postgresql://USER@HOST/DATABASE (its tables are created)")
    store.add_argument("--writes", type=int, default=2000)
    ttft = commands.add_parser("ttft")
    ttft.add_argument("--url", default="http://127.0.0.1:8000")
    ttft.add_argument("--api-key", default="unused")
    ttft.add_argument("--rounds", type=int, default=5)
    ttft.add_argument("--turns", type=int, default=3)
    args = parser.parse_args()
    bench_store(args) if args.command == "store" else bench_ttft(args)


if __name__ == "__main__":
    main()
