"""Two replicas, growing chats: round-robin against exact-prefix routing (docs/production.md,
"Many replicas: the inference gateway").

    .venv/bin/python -m bench.prefix_routing                       # 8 users x 10 turns, ~2k tokens
    .venv/bin/python -m bench.prefix_routing --users 4 --turns 6   # quicker

Starts two replicas of the embedded model (one OpenMP thread each, unpinned, so they do not
fight for the same core), each publishing its KV-cache events to this process. Then, side by
side in one run, the same kind of load twice, each with conversations of its own (no prefix
shared between the two): `--users` concurrent users, each holding a `--turns`-turn chat whose
history grows by about 190 tokens a turn.

- round-robin: the turns go to the replicas in turn, as a Service would send them;
- prefix: a bench-only picker doing what the endpoint picker's exact prefix scorer does: the
  prompt's token ids from `/v1/chat/completions/render`, their block hashes (sha256_cbor, README),
  the share of leading blocks each replica holds according to its `BlockStored` /
  `BlockRemoved` events (weight 3) plus its queue score (weight 2: fewer requests in flight), as
  the component's picker weighs them. It is a measuring instrument, not a product router.

Prints, per routing, the share of prompt tokens served from the prefix cache (`usage`'s
`cached_tokens` over `prompt_tokens`) and the mean and p90 time to first token.
"""

from __future__ import annotations

import argparse
import re
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import msgspec
import zmq

from harness.kv_blocks import block_hashes
from harness.server import RunningServer, free_port, launch_server, stop_server

REPLICAS = 2
TOPICS = [f"kv@replica{index}".encode() for index in range(REPLICAS)]


@dataclass
class Replica:
    server: RunningServer
    blocks: set[int] = field(default_factory=set)  # block hashes it holds, from its KV events
    in_flight: int = 0


@dataclass
class Turn:
    routing: str
    turn: int
    prompt_tokens: int
    cached_tokens: int
    ttft_s: float


class KvEventFollower:
    """Keeps each replica's block set from its KV events (a thread on a bound SUB socket)."""

    def __init__(self, endpoint: str, replicas: list[Replica]) -> None:
        from vllm.distributed.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEventBatch

        self._kinds = (BlockStored, BlockRemoved, AllBlocksCleared)
        self._decoder = msgspec.msgpack.Decoder(type=KVEventBatch)
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.SUB)
        self._socket.setsockopt(zmq.SUBSCRIBE, b"kv@")
        self._socket.bind(endpoint)
        self.replicas = replicas
        self.lock = threading.Lock()
        self._running = True
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        stored, removed, cleared = self._kinds
        while self._running:
            if not self._socket.poll(timeout=100):
                continue
            topic, _sequence, payload = self._socket.recv_multipart()
            replica = self.replicas[TOPICS.index(topic)]
            with self.lock:
                for event in self._decoder.decode(payload).events:
                    if isinstance(event, stored):
                        replica.blocks.update(event.block_hashes)
                    elif isinstance(event, removed):
                        replica.blocks.difference_update(event.block_hashes)
                    elif isinstance(event, cleared):
                        replica.blocks.clear()

    def close(self) -> None:
        self._running = False
        self._thread.join(timeout=5)
        self._context.destroy(linger=0)


def block_size_of(server: RunningServer) -> int:
    """The engine's block size, from vLLM's `vllm:cache_config_info` series."""
    page = httpx.get(server.base_url + "/metrics", timeout=30).text
    match = re.search(r'^vllm:cache_config_info\{[^}]*block_size="(\d+)"', page, re.MULTILINE)
    if match is None:
        raise SystemExit("vllm:cache_config_info has no block_size on /metrics")
    return int(match.group(1))


def user_message(conversation: str, turn: int) -> str:
    facts = " ".join(f"Item {turn}.{i} weighs {i * 7 % 13} kg." for i in range(18))
    return f"[{conversation}] Turn {turn}. Remember these: {facts} Which item is heaviest?"


class Load:
    """One routing's users, all at once; each user's turns one after another."""

    def __init__(
        self, routing: str, replicas: list[Replica], pick: Callable[[list[dict]], Replica],
        routing_lock: threading.Lock, args,
    ) -> None:
        self.routing, self.replicas, self.pick, self.routing_lock, self.args = routing, replicas, pick, routing_lock, args
        self.turns: list[Turn] = []
        self.lock = threading.Lock()
        self.model = replicas[0].server.model

    def user(self, index: int) -> None:
        conversation = f"{self.routing}-{index}-{uuid.uuid4().hex[:8]}"
        messages = [{"role": "system", "content": f"You are a terse assistant for session {conversation}."}]
        for turn in range(self.args.turns):
            messages.append({"role": "user", "content": user_message(conversation, turn)})
            replica = self.pick(messages)  # counted in flight by the pick, in the same lock
            try:
                reply, record = self.chat(replica, messages, turn)
            finally:
                with self.routing_lock:
                    replica.in_flight -= 1
            with self.lock:
                self.turns.append(record)
            messages.append({"role": "assistant", "content": reply})

    def chat(self, replica: Replica, messages: list[dict], turn: int) -> tuple[str, Turn]:
        body = {
            "model": self.model, "messages": messages, "max_tokens": self.args.reply_tokens,
            "temperature": 0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
        }
        started = time.perf_counter()
        ttft, text, usage = None, [], None
        with httpx.stream("POST", replica.server.base_url + "/v1/chat/completions", json=body, timeout=600) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = msgspec.json.decode(line[len("data: "):])
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices", []):
                    if choice["delta"].get("content"):
                        ttft = ttft if ttft is not None else time.perf_counter() - started
                        text.append(choice["delta"]["content"])
        assert usage is not None and ttft is not None, "a stream without usage or tokens"
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        return "".join(text), Turn(self.routing, turn, usage["prompt_tokens"], cached, ttft)

    def run(self) -> list[Turn]:
        with ThreadPoolExecutor(self.args.users) as pool:
            for future in [pool.submit(self.user, index) for index in range(self.args.users)]:
                future.result()
        return self.turns


def round_robin(replicas: list[Replica], lock: threading.Lock) -> Callable[[list[dict]], Replica]:
    counter = iter(range(1 << 62))

    def pick(_messages: list[dict]) -> Replica:
        with lock:
            replica = replicas[next(counter) % len(replicas)]
            replica.in_flight += 1
            return replica

    return pick


# The endpoint picker's weights (deploy/components/inference-gateway/endpoint-picker-config.yaml).
PREFIX_WEIGHT, QUEUE_WEIGHT = 3.0, 2.0


def prefix_router(
    replicas: list[Replica], follower: KvEventFollower, lock: threading.Lock, block_size: int, model: str
) -> Callable[[list[dict]], Replica]:
    """The picker's exact prefix scorer (the share of the prompt's leading blocks a replica
    holds) and its queue scorer (min-max normalised requests in flight), weighted as configured."""

    def pick(messages: list[dict]) -> Replica:
        rendered = httpx.post(
            replicas[0].server.base_url + "/v1/chat/completions/render",
            json={"model": model, "messages": messages}, timeout=60,
        )
        rendered.raise_for_status()
        hashes = block_hashes(rendered.json()["token_ids"], block_size)

        def prefix_share(replica: Replica) -> float:
            held = 0
            for block_hash in hashes:  # the longest run of leading blocks this replica holds
                if block_hash not in replica.blocks:
                    break
                held += 1
            return held / len(hashes) if hashes else 0.0

        with lock, follower.lock:
            queues = [replica.in_flight for replica in replicas]
            spread = max(queues) - min(queues)

            def score(replica: Replica) -> float:
                queue = 1.0 if spread == 0 else (max(queues) - replica.in_flight) / spread
                return PREFIX_WEIGHT * prefix_share(replica) + QUEUE_WEIGHT * queue

            replica = max(replicas, key=score)
            replica.in_flight += 1
            return replica

    return pick


def summary(turns: list[Turn]) -> dict[str, float]:
    ttfts = sorted(turn.ttft_s for turn in turns)
    return {
        "requests": len(turns),
        "cached_share": sum(t.cached_tokens for t in turns) / max(1, sum(t.prompt_tokens for t in turns)),
        "mean_ttft_s": statistics.fmean(ttfts),
        "p90_ttft_s": ttfts[min(len(ttfts) - 1, int(0.9 * len(ttfts)))],
        "mean_prompt_tokens": statistics.fmean(t.prompt_tokens for t in turns),
        "last_turn_prompt_tokens": max(t.prompt_tokens for t in turns),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--reply-tokens", type=int, default=24)
    parser.add_argument("--omp-threads", type=int, default=1, help="OpenMP threads per replica")
    parser.add_argument("--block-size", type=int, default=None,
                        help="the replicas' --block-size (default: vLLM's, 128 on its CPU build)")
    args = parser.parse_args()

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    replicas: list[Replica] = []
    follower = None
    try:
        follower = KvEventFollower(endpoint, replicas)
        for index in range(REPLICAS):
            replicas.append(Replica(launch_server(wait_ready=False, env={
                "AIROBOROS_KV_EVENTS_ENDPOINT": endpoint, "AIROBOROS_KV_EVENTS_TOPIC": TOPICS[index].decode(),
                "AIROBOROS_CPU_KV_CACHE_GIB": "1", "AIROBOROS_MAX_MODEL_LEN": "4096",
                "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": str(args.omp_threads),
                **({"AIROBOROS_BLOCK_SIZE": str(args.block_size)} if args.block_size else {}),
            })))
        from harness.server import wait_until_ready

        for replica in replicas:
            wait_until_ready(replica.server)
        block_size = block_size_of(replicas[0].server)
        model = replicas[0].server.model
        print(f"2 replicas ready; block size {block_size}; {args.users} users x {args.turns} turns per routing")
        results = {}
        lock = threading.Lock()  # the picks and the in-flight counts
        for routing, pick in (
            ("round-robin", round_robin(replicas, lock)),
            ("prefix", prefix_router(replicas, follower, lock, block_size, model)),
        ):
            started = time.perf_counter()
            results[routing] = summary(Load(routing, replicas, pick, lock, args).run())
            print(f"{routing}: {time.perf_counter() - started:.0f} s", flush=True)
        print("\n| routing | requests | cached share | mean TTFT (s) | p90 TTFT (s) | mean prompt | last prompt |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for routing, row in results.items():
            print(f"| {routing} | {row['requests']} | {row['cached_share']:.2f} | {row['mean_ttft_s']:.3f} | "
                  f"{row['p90_ttft_s']:.3f} | {row['mean_prompt_tokens']:.0f} | {row['last_turn_prompt_tokens']} |")
        rr, prefix = results["round-robin"], results["prefix"]
        print(f"\nprefix/round-robin: mean TTFT {prefix['mean_ttft_s'] / rr['mean_ttft_s']:.2f}x, "
              f"p90 {prefix['p90_ttft_s'] / rr['p90_ttft_s']:.2f}x")
    finally:
        for replica in replicas:
            stop_server(replica.server)
        if follower is not None:
            follower.close()


if __name__ == "__main__":
    main()
