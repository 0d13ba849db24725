"""Time to first token over ten chat turns past the context limit, under two `"fit"` policies.

A chat that outgrows the context sends its whole history every turn with `history: "fit"`. This
runs one real server (the embedded SmolLM2 model, a small `--max-model-len` so it takes minutes
on 2 cores, vLLM's prefix cache on as always) and two chats of identical shape side by side,
turn by turn, so both meet the same machine:

- **fewest** (the policy before drop points): each turn drops the fewest oldest exchanges
  that make the prompt fit. The server no longer does this, so the client does it: it asks
  `POST /v1/chat/render` with `history: "error"` for the chat without its 0, 1, 2, ... oldest
  exchanges until one fits, and sends that. The engine receives exactly the prompt the old
  policy built (the old "fit" rendered the same kept messages the same way).
- **blocks** (the server's `"fit"` now): the whole history with `history: "fit"`.

The chats differ only in their system message, so neither finds the other's prefix in the cache.
Each starts with one unmeasured turn whose history just fits (the turn before the limit, which
leaves its prompt in the prefix cache as a real previous turn would), then ten measured turns,
each adding one exchange and a new question. Replies are fixed synthetic text, not the model's:
both chats then carry the very same history, and TTFT is what the policy changes (prefill).

Reported per turn: TTFT, prompt tokens, dropped messages, and the prefix-cache hit tokens vLLM
counted for that request (`vllm:prefix_cache_hits` on /metrics); then the mean TTFT of each
policy and their ratio (the goal of issue 17: blocks ≤ 0.3× fewest), and the mean tokens each
prefilled (prompt less cache hits), which shared machines do not blur as they blur time.

    .venv/bin/python -m bench.bench_fit_cache [--max-model-len 4096] [--turns 10]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.bench_render import message_text, sentence  # noqa: E402
from bench.load import STOP_STRINGS, RequestRecord, stream_one  # noqa: E402
from harness.server import running_server  # noqa: E402

MAX_TOKENS = 4


@dataclass
class Chat:
    """One conversation: its system message and the exchanges so far."""

    name: str
    system: str
    exchanges: list[tuple[str, str]] = field(default_factory=list)

    def messages(self, question: str, drop: int = 0) -> list[dict]:
        messages = [{"role": "system", "content": self.system}]
        for user, assistant in self.exchanges[drop:]:
            messages.append({"role": "user", "content": user})
            messages.append({"role": "assistant", "content": assistant})
        return [*messages, {"role": "user", "content": question}]


@dataclass
class Turn:
    policy: str
    ttft_s: float
    prompt_tokens: int
    dropped: int
    cached_tokens: int


def synthetic_exchanges(count: int, reply_sentences: int) -> list[tuple[str, str]]:
    rng = random.Random(17)
    return [(message_text(rng, 1), message_text(rng, reply_sentences)) for _ in range(count)]


def prefix_cache_hits(client: httpx.Client) -> float:
    """vLLM's running count of prompt tokens found in the prefix cache."""
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("vllm:prefix_cache_hits"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def render(client: httpx.Client, model: str, messages: list[dict], history: str) -> httpx.Response:
    body = {"model": model, "messages": messages, "history": history, "max_tokens": MAX_TOKENS}
    return client.post("/v1/chat/render", json=body)


def fewest_drop(client: httpx.Client, model: str, chat: Chat, question: str) -> int:
    """The fewest oldest exchanges whose dropping makes the prompt fit: the old `"fit"`."""
    for drop in range(len(chat.exchanges) + 1):
        if render(client, model, chat.messages(question, drop), "error").status_code == 200:
            return drop
    raise RuntimeError("the last question alone does not fit")


def ask(server_url: str, client: httpx.Client, model: str, chat: Chat, question: str) -> Turn:
    """Send one turn under the chat's policy; time it from the client."""
    drop = 0
    if chat.name == "fewest":
        drop = fewest_drop(client, model, chat, question)
        messages, history = chat.messages(question, drop), "error"
    else:
        messages, history = chat.messages(question), "fit"
    rendered = render(client, model, messages, history)
    rendered.raise_for_status()
    hits_before = prefix_cache_hits(client)
    body = {
        "model": model, "messages": messages, "history": history, "max_tokens": MAX_TOKENS,
        "temperature": 0.0, "ignore_eos": True, "stop": STOP_STRINGS, "stream": True,
    }

    async def stream() -> RequestRecord:
        async with httpx.AsyncClient(base_url=server_url) as async_client:
            return await stream_one(async_client, body, timeout_s=600)

    record = asyncio.run(stream())
    if not record.ok or record.ttft_s is None:
        raise RuntimeError(f"{chat.name}: the request failed: {record.error}")
    return Turn(
        chat.name, record.ttft_s, rendered.json()["num_tokens"],
        rendered.json()["dropped_messages"] + 2 * drop,
        int(prefix_cache_hits(client) - hits_before),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--reply-sentences", type=int, default=6, help="length of each reply")
    args = parser.parse_args()

    print(f"starting the server (SmolLM2, --max-model-len {args.max_model_len}) ...", flush=True)
    started = time.monotonic()
    with running_server("--max-model-len", str(args.max_model_len)) as server:
        print(f"ready in {time.monotonic() - started:.0f} s", flush=True)
        client = httpx.Client(base_url=server.base_url, timeout=600)
        model = client.get("/v1/models").json()["data"][0]["id"]
        pool = synthetic_exchanges(200, args.reply_sentences)
        chats = [Chat("fewest", "You are assistant A. Keep answers short."),
                 Chat("blocks", "You are assistant B. Keep answers short.")]

        # The most exchanges whose prompt still fits, for the turn before the limit.
        fitting = 0
        while render(client, model, chats[0].messages("Go on?"), "error").status_code == 200:
            fitting += 1
            chats[0].exchanges = pool[:fitting]
        fitting -= 1
        for chat in chats:
            chat.exchanges = pool[:fitting]
            turn = ask(server.base_url, client, model, chat, "Go on?")
            print(f"{chat.name:>6}: turn before the limit: {turn.prompt_tokens} tokens, "
                  f"TTFT {turn.ttft_s:.2f} s (unmeasured)", flush=True)

        turns: list[Turn] = []
        print(f"{'turn':>4} {'policy':>6} {'TTFT s':>8} {'prompt':>7} {'dropped':>8} {'cached':>7}")
        for number in range(1, args.turns + 1):
            question = f"And what about point {number}?"
            for chat in chats:
                chat.exchanges = pool[: fitting + number]
                turn = ask(server.base_url, client, model, chat, question)
                turns.append(turn)
                print(f"{number:>4} {turn.policy:>6} {turn.ttft_s:>8.2f} {turn.prompt_tokens:>7} "
                      f"{turn.dropped:>8} {turn.cached_tokens:>7}", flush=True)
        client.close()

    means = {
        chat.name: statistics.mean(t.ttft_s for t in turns if t.policy == chat.name)
        for chat in chats
    }
    prefilled = {
        chat.name: statistics.mean(
            t.prompt_tokens - t.cached_tokens for t in turns if t.policy == chat.name
        )
        for chat in chats
    }
    print(f"mean TTFT over {args.turns} turns past the limit: fewest {means['fewest']:.2f} s, "
          f"blocks {means['blocks']:.2f} s, ratio {means['blocks'] / means['fewest']:.2f}")
    print(f"mean tokens prefilled (prompt less prefix-cache hits): "
          f"fewest {prefilled['fewest']:.0f}, blocks {prefilled['blocks']:.0f}, "
          f"ratio {prefilled['blocks'] / prefilled['fewest']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
