"""How long the chat route spends turning messages into prompt ids before the engine starts.

Builds a 100-message chat of about 8k tokens (system, 49 exchanges, a final question) and times
`render_fitted` (validation, render and the token ids the server sends to the engine) three ways:

- **full**: a plain `tokenize`, one tokenization of the whole prompt per request (the server
  before the token cache);
- **growing chat, warm cache**: the realistic case. A chat grows one exchange per turn, each
  turn re-sending the whole history plus the new exchange, through one `TokenCache` (as the
  server keeps one); reported for the last turn (100 messages, about 8k tokens) and the mean
  over all turns;
- **cold cache**: the whole 100-message chat at once into an empty cache (a chat the server has
  not seen, e.g. after a restart): every piece tokenized on its own.

It also times a `history="fit"` request that must drop about half the chat, both ways, checks
that every id list equals a full tokenization, and prints what the cache holds afterwards.

    python bench/bench_render.py [--runs 200] [--tokenizer FILE_OR_DIR]

The tokenizer is the GPT-NeoX-20B one from ../shared/data (or AIROBOROS_NEOX_TOKENIZER), not
part of the project; a directory (e.g. the one `airoboros-server prepare-default-model` prints)
means its tokenizer.json.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from prompt_formats import get_format  # noqa: E402

DEFAULT_TOKENIZER = REPO_ROOT.parent / "shared" / "data" / "gpt-neox-20b-tokenizer.json"
TARGET_TOKENS = 8000
MAX_MODEL_LEN = 8192

WORDS = (
    "the model answers questions about history science cooking travel and code with care "
    "because a curious user asked for detail while the assistant explained each step of the "
    "process in plain words including numbers like 42 and 1999 dates names places rivers "
    "mountains functions variables loops errors tests servers tokens prompts context windows "
    "summary example however therefore finally first second third also not only but"
).split()


def sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(6, 16))]
    return " ".join(words).capitalize() + rng.choice([".", ".", "?", "!", ":"])


def message_text(rng: random.Random, sentences: int) -> str:
    lines = [sentence(rng) for _ in range(sentences)]
    if rng.random() < 0.3:
        lines.insert(rng.randint(0, len(lines)), "\n- " + "\n- ".join(rng.sample(WORDS, 3)) + "\n")
    return " ".join(lines)


def build_chat(sentences_per_reply: int, seed: int = 0) -> list[dict]:
    """System + 49 user/assistant exchanges + a final user message: 100 messages."""
    rng = random.Random(seed)
    messages = [{"role": "system", "content": "You are a thorough assistant. " + sentence(rng)}]
    for _ in range(49):
        messages.append({"role": "user", "content": message_text(rng, 1)})
        messages.append({"role": "assistant", "content": message_text(rng, sentences_per_reply)})
    messages.append({"role": "user", "content": "Summarize everything above in three lines."})
    return messages


def chat_of_about(tokens: int, tokenize: Callable[[str], list[int]]) -> list[dict]:
    """The 100-message chat whose prompt is closest to `tokens` tokens."""
    fmt = get_format()
    best = build_chat(1)
    for sentences in range(1, 20):
        chat = build_chat(sentences)
        size = len(tokenize(fmt.render(chat)))
        if abs(size - tokens) < abs(len(tokenize(fmt.render(best))) - tokens):
            best = chat
        if size > tokens:
            break
    return best


def growing_turns(messages: list[dict]) -> list[list[dict]]:
    """The requests of a chat that grows one exchange per turn and ends as `messages`.

    Turn k re-sends the system message, the first k exchanges, and a new question; the last
    turn is `messages` itself.
    """
    system, exchanges, question = messages[0], messages[1:-1], messages[-1]
    turns = []
    for k in range(len(exchanges) // 2 + 1):
        asked = exchanges[2 * k] if 2 * k < len(exchanges) else question
        turns.append([system, *exchanges[: 2 * k], asked])
    return turns


def timed(runs: int, call: Callable[[], object]) -> list[float]:
    for _ in range(max(5, runs // 20)):  # warm the tokenizer's word cache and the allocator
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return times


def summary(label: str, times: list[float]) -> str:
    p95 = statistics.quantiles(times, n=20)[-1] if len(times) > 1 else times[0]
    return (
        f"{label:<44} median {statistics.median(times):8.3f} ms   p95 {p95:8.3f} ms"
        f"   min {min(times):8.3f} ms"
    )


def load_tokenize(path: Path) -> Callable[[str], list[int]]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json" if path.is_dir() else path))
    return lambda text: tokenizer.encode(text, add_special_tokens=False).ids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument(
        "--tokenizer",
        type=Path,
        default=Path(os.environ.get("AIROBOROS_NEOX_TOKENIZER", DEFAULT_TOKENIZER)),
    )
    args = parser.parse_args()
    if not args.tokenizer.exists():
        print(
            f"{args.tokenizer} is missing: put ../shared/data beside the checkout or point "
            "AIROBOROS_NEOX_TOKENIZER (or --tokenizer) at gpt-neox-20b-tokenizer.json.",
            file=sys.stderr,
        )
        return 2

    tokenize = load_tokenize(args.tokenizer)
    fmt = get_format()
    messages = chat_of_about(TARGET_TOKENS, tokenize)
    full = fmt.render_fitted(messages, tokenize=tokenize, max_prompt_tokens=MAX_MODEL_LEN)
    half = len(full.token_ids) // 2
    started = time.perf_counter()
    cache = fmt.token_cache(tokenize)
    check_ms = (time.perf_counter() - started) * 1000

    print(
        f"chat: {len(messages)} messages, {len(full.prompt)} characters, "
        f"{len(full.token_ids)} tokens ({args.tokenizer.name}); {args.runs} runs each"
    )
    print(f"token cache: joins safely: {cache.joins_safely} (checked in {check_ms:.0f} ms)")

    def fitted(tokens: Callable[[str], list[int]], **kwargs: object):
        return fmt.render_fitted(messages, tokenize=tokens, **kwargs)  # type: ignore[arg-type]

    print(summary("render only", timed(args.runs, lambda: fmt.render(messages))))
    print(summary("tokenize only (one call)", timed(args.runs, lambda: tokenize(full.prompt))))
    print(summary(
        "full: render_fitted, one tokenization",
        timed(args.runs, lambda: fitted(tokenize, max_prompt_tokens=MAX_MODEL_LEN)),
    ))

    turns = growing_turns(messages)
    last_turn: list[float] = []
    every_turn: list[float] = []
    for _ in range(max(3, args.runs // 20)):
        chat_cache = fmt.token_cache(tokenize)
        for request in turns:
            start = time.perf_counter()
            result = fmt.render_fitted(
                request, tokenize=chat_cache, max_prompt_tokens=MAX_MODEL_LEN
            )
            every_turn.append((time.perf_counter() - start) * 1000)
        last_turn.append(every_turn[-1])
        assert result.token_ids == full.token_ids, "cached ids differ from a full tokenization"
    print(summary(f"growing chat, warm: last turn ({len(turns)} turns)", last_turn))
    print(summary("growing chat, warm: every turn", every_turn))
    print(summary(
        "same chat again, warm",
        timed(args.runs, lambda: fitted(chat_cache, max_prompt_tokens=MAX_MODEL_LEN)),
    ))

    def cold() -> object:
        cache.clear()
        return fitted(cache, max_prompt_tokens=MAX_MODEL_LEN)

    print(summary("cold: whole chat into an empty cache", timed(max(3, args.runs // 10), cold)))

    old_fit = fitted(tokenize, max_prompt_tokens=half, history="fit")
    new_fit = fitted(chat_cache, max_prompt_tokens=half, history="fit")
    assert new_fit == old_fit, "the cache changed what fit chose"
    print(summary(
        f"fit to {half} tokens, full tokenizations",
        timed(args.runs, lambda: fitted(tokenize, max_prompt_tokens=half, history="fit")),
    ))
    print(summary(
        f"fit to {half} tokens, warm cache",
        timed(args.runs, lambda: fitted(chat_cache, max_prompt_tokens=half, history="fit")),
    ))
    print(
        f"  fit dropped {new_fit.dropped_messages} messages, kept {len(new_fit.token_ids)} tokens"
    )
    print(
        f"cache after one chat: {len(chat_cache)} pieces, "
        f"{chat_cache.cached_bytes / 1024:.0f} KiB (limit {chat_cache.max_bytes >> 20} MiB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
