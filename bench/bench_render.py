"""How long the chat route spends turning messages into prompt ids before the engine starts.

Builds a 100-message chat of about 8k GPT-NeoX tokens (system, 49 exchanges, a final question)
and times `render_fitted` over many runs: the render plus the one tokenizer call the server
makes on every request. It also times the render and the tokenizer call alone, so a slow total
can be blamed on the right one, and a `history="fit"` run that must drop half the chat.

    python bench/bench_render.py [--runs 300] [--tokenizer PATH]

The tokenizer is the GPT-NeoX-20B one from ../shared/data (or AIROBOROS_NEOX_TOKENIZER); it is
not part of the project.
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
    p95 = statistics.quantiles(times, n=20)[-1]
    return (
        f"{label:<34} median {statistics.median(times):7.3f} ms   p95 {p95:7.3f} ms"
        f"   min {min(times):7.3f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument(
        "--tokenizer",
        type=Path,
        default=Path(os.environ.get("AIROBOROS_NEOX_TOKENIZER", DEFAULT_TOKENIZER)),
    )
    args = parser.parse_args()
    if not args.tokenizer.is_file():
        print(
            f"{args.tokenizer} is missing: put ../shared/data beside the checkout or point "
            "AIROBOROS_NEOX_TOKENIZER (or --tokenizer) at gpt-neox-20b-tokenizer.json.",
            file=sys.stderr,
        )
        return 2

    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(args.tokenizer))

    def tokenize(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False).ids

    fmt = get_format()
    messages = chat_of_about(TARGET_TOKENS, tokenize)
    prompt = fmt.render(messages)
    fitted = fmt.render_fitted(messages, tokenize=tokenize, max_prompt_tokens=MAX_MODEL_LEN)
    half = len(fitted.token_ids) // 2
    fit = fmt.render_fitted(messages, tokenize=tokenize, max_prompt_tokens=half, history="fit")

    print(
        f"chat: {len(messages)} messages, {len(prompt)} characters, "
        f"{len(fitted.token_ids)} GPT-NeoX tokens; {args.runs} runs each"
    )
    print(summary("render only", timed(args.runs, lambda: fmt.render(messages))))
    print(summary("tokenize only (one call)", timed(args.runs, lambda: tokenize(prompt))))
    total = timed(
        args.runs,
        lambda: fmt.render_fitted(messages, tokenize=tokenize, max_prompt_tokens=MAX_MODEL_LEN),
    )
    print(summary("render_fitted (render + tokenize)", total))
    fit_times = timed(
        args.runs,
        lambda: fmt.render_fitted(
            messages, tokenize=tokenize, max_prompt_tokens=half, history="fit"
        ),
    )
    print(summary(f"render_fitted fit to {half} tokens", fit_times))
    print(f"  fit dropped {fit.dropped_messages} messages, kept {len(fit.token_ids)} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
