"""What a second chat turn gains from vLLM's prefix cache (docs/api.md, "Cached prompt tokens").

    .venv/bin/python -m bench.prefix_cache --url http://127.0.0.1:8000

For conversations of two sizes, three times each: turn 1 (a system text of "facts" and a
question), then turn 2 (turn 1, its reply and a new question), streamed; and the same turn 2
cold, under a new system-text nonce so nothing of it is cached. Prints each second turn's
prompt and cached tokens, and the time to its first token, cached and cold, with the medians.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import openai


def facts(count: int) -> str:
    return " ".join(f"Fact {i}: {i} times {i} is {i * i}." for i in range(count))


def first_token(client: openai.OpenAI, model: str, messages: list[dict]) -> tuple[float, object]:
    started = time.perf_counter()
    seconds, usage = float("nan"), None
    stream = client.chat.completions.create(
        model=model, messages=messages, temperature=0, max_tokens=8, stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if seconds != seconds and chunk.choices and chunk.choices[0].delta.content:
            seconds = time.perf_counter() - started
        usage = chunk.usage or usage
    return seconds, usage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--sizes", default="20,100", help="facts in the system text (about 18 tokens each)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    client = openai.OpenAI(base_url=args.url + "/v1", api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    for size in (int(part) for part in args.sizes.split(",")):
        rows = []
        for _ in range(args.rounds):
            def system(nonce: str) -> dict:
                return {"role": "system", "content": f"Session {nonce}. Use these facts.\n{facts(size)}"}

            question = {"role": "user", "content": "What is 7 times 7?"}
            turn1 = [system(uuid.uuid4().hex), question]
            reply = client.chat.completions.create(model=model, messages=turn1, temperature=0, max_tokens=32)
            tail = [{"role": "assistant", "content": reply.choices[0].message.content},
                    {"role": "user", "content": "And 8 times 8?"}]
            cached_s, usage = first_token(client, model, turn1 + tail)
            cold_s, _ = first_token(client, model, [system(uuid.uuid4().hex), question, *tail])
            rows.append((cached_s, cold_s))
            print(f"facts={size}: turn 2 prompt {usage.prompt_tokens} tokens, cached "
                  f"{usage.prompt_tokens_details.cached_tokens}; first token {cached_s:.3f} s cached, {cold_s:.3f} s cold")
        print(f"facts={size}: median first token {statistics.median(r[0] for r in rows):.3f} s cached, "
              f"{statistics.median(r[1] for r in rows):.3f} s cold")


if __name__ == "__main__":
    main()
