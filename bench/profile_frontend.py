"""Where the front end spends its CPU under load: py-spy on the API server process.

Starts a server (ours by default, or `vllm serve` with --server vllm, same engine settings as
the benchmark), drives streaming load at one concurrency, and samples the front-end process
with py-spy (`--nonblocking`, so the process is not paused) for the duration. The collapsed
stacks are then attributed two ways:

- self time by function (the leaf frame), the usual "top";
- inclusive time by layer: the first frame of the stack that belongs to a known layer
  (JSON encoding, SSE framing, pydantic, logging, our server modules, vLLM's output processor
  and detokenizer, uvicorn/httptools, asyncio itself, ...), counted once per sample.

    python -m bench.profile_frontend [--server ours|vllm] [--concurrency 16] [--requests 64] [--max-tokens 128]
    python -m bench.profile_frontend --url http://127.0.0.1:8000 --pid 1234    (a server already running)

Writes bench/results/profile-<server>-<model>-c<N>.txt (the summary) and .collapsed (raw stacks, for
speedscope or flame graph tools; an .svg too when inferno or flamegraph.pl is installed).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench import models
from bench.load import run_level, summarize
from bench.harness import PROMPTS
from bench.servers import EngineConfig, ProcessProbe, Server, find_frontend_pid, launch, log_dir, ours_command, stop, vllm_command
from harness.server import free_port

OUT = Path(__file__).resolve().parent / "results"

# (layer, substring of "function (file)"): the first matching frame from the leaf upwards wins,
# so the most specific layers come first.
LAYERS = (
    ("json encode/decode", ("json/encoder", "json/decoder", "json/__init__", "orjson", "_json")),
    ("pydantic validation/serialization", ("pydantic",)),
    ("logging", ("logging/__init__", "/logging/")),
    ("prometheus metrics", ("prometheus_client",)),
    ("vllm detokenizer", ("vllm/v1/engine/detokenizer", "tokenizers", "transformers/tokenization")),
    ("vllm output processor", ("vllm/v1/engine/output_processor", "vllm/outputs.py", "vllm/v1/metrics", "vllm/v1/engine/logprobs")),
    ("vllm engine client (zmq, msgspec)", ("vllm/v1/engine/core_client", "zmq", "msgspec", "vllm/v1/serial_utils")),
    ("vllm AsyncLLM", ("vllm/v1/engine/async_llm",)),
    ("vllm serving (OpenAI layer)", ("vllm/entrypoints",)),
    ("sse-starlette", ("sse_starlette",)),
    ("our prompt_formats", ("prompt_formats/",)),
    # py-spy writes paths relative to sys.path: "(server/chat.py:193)".
    ("our server", ("(server/", "/server/")),
    ("fastapi/starlette", ("fastapi/", "starlette/")),
    ("uvicorn/httptools/h11", ("uvicorn/", "httptools", "h11/")),
    ("asyncio/uvloop", ("asyncio/", "uvloop")),
)


def classify(frames: list[str]) -> str:
    for frame in reversed(frames):  # leaf first
        for layer, needles in LAYERS:
            if any(needle in frame for needle in needles):
                return layer
    return "other"


def summarize_collapsed(path: Path, top: int = 40) -> str:
    """Self time by function and by layer from py-spy's raw (collapsed) output."""
    by_leaf: collections.Counter[str] = collections.Counter()
    by_layer: collections.Counter[str] = collections.Counter()
    by_our_frame: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        by_leaf[frames[-1]] += count
        by_layer[classify(frames)] += count
        ours = {frame for frame in frames if "(server/" in frame or "/server/" in frame or "prompt_formats/" in frame}
        for frame in ours:
            by_our_frame[frame] += count
    if not total:
        return "no samples"
    lines = [f"{total} samples", "", "Self time by layer (leaf frame's layer):"]
    lines += [f"  {100 * n / total:5.1f} %  {layer}" for layer, n in by_layer.most_common()]
    lines += ["", f"Top {top} functions by self time:"]
    lines += [f"  {100 * n / total:5.1f} %  {frame}" for frame, n in by_leaf.most_common(top)]
    lines += ["", "Inclusive time of our own frames (server/, prompt_formats/):"]
    lines += [f"  {100 * n / total:5.1f} %  {frame}" for frame, n in by_our_frame.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_frontend", description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=["ours", "vllm"], default="ours")
    parser.add_argument("--url")
    parser.add_argument("--pid", type=int)
    parser.add_argument("--served-model", help="with --url: the model name")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--model", choices=["default", "mpt"], default="default",
                        help="the embedded default model, or a tiny MPT (a fast engine: the front end shows)")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--summarize", type=Path, help="only summarize this .collapsed file from an earlier run")
    args = parser.parse_args(argv)
    if args.summarize:
        print(summarize_collapsed(args.summarize))
        return 0
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    args.out.mkdir(parents=True, exist_ok=True)

    server: Server | None = None
    try:
        if args.url:
            base_url = args.url.rstrip("/")
            model = args.served_model or models.DEFAULT_SERVED_NAME
            pid = args.pid or find_frontend_pid(int(base_url.rsplit(":", 1)[1]))
        else:
            if args.model == "mpt":
                import tempfile

                model_dir = models.make_tiny_mpt(Path(tempfile.mkdtemp(prefix="airoboros-bench-")) / models.TINY_MPT_NAME)
                config = EngineConfig(model_dir=model_dir, served_name=models.TINY_MPT_NAME, use_default_model=False,
                                      max_model_len=512, enforce_eager=not args.compile)
            else:
                config = EngineConfig(model_dir=models.default_model_dir(), served_name=models.DEFAULT_SERVED_NAME,
                                      use_default_model=True, enforce_eager=not args.compile)
            port = free_port()
            command = ours_command(config, port) if args.server == "ours" else vllm_command(config, port)
            ready = "/health/ready" if args.server == "ours" else "/health"
            server = launch(args.server, command, config.environment(), port, config.served_name, ready, log_dir())
            base_url, model, pid = server.base_url, server.model, server.frontend_pid
            print(f"{args.server} ready in {server.started_in_s:.0f} s, front end pid {pid}", flush=True)
        # Warm up, then profile one run.
        asyncio.run(run_level(base_url, model=model, prompts=PROMPTS, concurrency=args.concurrency,
                              requests=args.concurrency, max_tokens=8, time_limit_s=300))
        stem = args.out / f"profile-{args.server}-{args.model}-c{args.concurrency}"
        collapsed, svg = stem.with_suffix(".collapsed"), stem.with_suffix(".svg")
        recorder = subprocess.Popen(
            [py_spy, "record", "--pid", str(pid), "--rate", str(args.rate), "--nonblocking",
             "--format", "raw", "--output", str(collapsed), "--duration", "600"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        time.sleep(1.0)
        with ProcessProbe(pid) as probe:
            records, wall = asyncio.run(run_level(
                base_url, model=model, prompts=PROMPTS, concurrency=args.concurrency, requests=args.requests,
                max_tokens=args.max_tokens, time_limit_s=600,
            ))
        recorder.send_signal(2)  # SIGINT: py-spy writes what it has
        try:
            _, errors = recorder.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            recorder.kill()
            _, errors = recorder.communicate()
        stats = summarize(records, wall, args.max_tokens)
        header = (
            f"{args.server} front end (pid {pid}) at concurrency {args.concurrency}, {args.requests} requests x "
            f"{args.max_tokens} tokens: {stats['output_tokens_per_s']:.1f} tok/s, TTFT p50 {stats['ttft_ms_p50']:.0f} ms, "
            f"ITL p50 {stats['itl_ms_p50']:.1f} ms; front-end CPU {probe.frontend_cpu_s:.2f} s = "
            f"{1000 * probe.frontend_cpu_s / max(stats['output_tokens'], 1):.3f} s per 1k tokens "
            f"over {wall:.1f} s wall ({100 * probe.frontend_cpu_s / wall:.0f} % of a core)"
        )
        summary = header + "\n\n" + (summarize_collapsed(collapsed) if collapsed.exists() else f"py-spy failed: {errors}")
        stem.with_suffix(".txt").write_text(summary + "\n")
        if collapsed.exists():
            _flamegraph(collapsed, svg)
        print(summary)
        print(f"\nwritten: {stem.with_suffix('.txt')} {collapsed}")
    finally:
        if server is not None:
            stop(server)
    return 0


def _flamegraph(collapsed: Path, svg: Path) -> None:
    """A flame graph SVG from collapsed stacks, when inferno or flamegraph.pl is around (optional)."""
    for tool in ("inferno-flamegraph", "flamegraph.pl"):
        path = shutil.which(tool)
        if path:
            with open(svg, "w") as handle:
                subprocess.run([path, str(collapsed)], stdout=handle, check=False)
            return


if __name__ == "__main__":
    sys.exit(main())
