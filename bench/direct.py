"""vLLM's AsyncLLM driven in-process: the same load with no HTTP, no JSON, no server code.

The harness starts this as a child process (`python -m bench.direct --model DIR ...`) and talks
to it over stdin/stdout, one JSON object per line, so it can take its turn between the HTTP
servers like a third contestant. The engine arguments are the ones our server builds
(`server.engine.args.engine_args`); prompts arrive as the token ids our server renders, and sampling is what our server
asks the engine for (greedy, `ignore_eos`, the airoboros stops, DELTA outputs). What this
process measures is the floor under any front end; the HTTP numbers minus these are the cost
of the front end.

    → {"cmd": "run", "prompt_ids": [[...], ...], "concurrency": 4, "requests": 8,
       "max_tokens": 128, "time_limit_s": 120}
    ← @@bench {"records": [...], "wall_s": 12.3}     (other stdout lines are vLLM's log)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.load import STOP_STRINGS
from harness.streams import StreamRecord, closed_loop


def build_engine(args: argparse.Namespace) -> Any:
    """The engine our server would build for the same settings (`server.engine.args`)."""
    from vllm.v1.engine.async_llm import AsyncLLM

    from server.engine.args import apply_engine_environment, engine_args
    from server.settings import Settings

    settings = Settings(
        model=Path(args.model),
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        enforce_eager=args.enforce_eager,
    )
    apply_engine_environment(settings)
    return AsyncLLM.from_engine_args(engine_args(settings, Path(args.model), args.served_name))


async def generate_one(llm: Any, prompt_ids: list[int], max_tokens: int, timeout_s: float) -> StreamRecord:
    from vllm.inputs.engine import tokens_input
    from vllm.sampling_params import RequestOutputKind, SamplingParams

    params = SamplingParams(
        temperature=0.0, max_tokens=max_tokens, ignore_eos=True, stop=STOP_STRINGS,
        output_kind=RequestOutputKind.DELTA, skip_special_tokens=True,
    )
    record = StreamRecord(prompt_tokens=len(prompt_ids))

    async def consume() -> None:
        async for output in llm.generate(tokens_input(prompt_ids), params, uuid.uuid4().hex):
            for completion in output.outputs:
                record.completion_tokens += len(completion.token_ids)
                if completion.text:
                    record.note_content()

    try:
        await asyncio.wait_for(consume(), timeout=timeout_s)
        record.ok = True
        record.status = 200
    except Exception as error:  # noqa: BLE001 - reported, not raised
        record.error = f"{type(error).__name__}: {error}"[:300]
    record.e2e_s = time.monotonic() - record.started
    return record


async def run_level(llm: Any, command: dict[str, Any]) -> dict[str, Any]:
    prompts = command["prompt_ids"]
    deadline = time.monotonic() + command["time_limit_s"]
    records: list[StreamRecord] = []

    async def one(index: int) -> None:
        left = max(1.0, deadline - time.monotonic())
        records.append(await generate_one(llm, prompts[index % len(prompts)], command["max_tokens"], left))

    wall = await closed_loop(
        one, concurrency=command["concurrency"], max_requests=command["requests"], time_limit_s=command["time_limit_s"]
    )
    return {"records": [asdict(record) for record in records], "wall_s": wall}


MARKER = "@@bench "  # vLLM logs to stdout too: replies are the lines that start with this


def reply(message: dict[str, Any]) -> None:
    sys.stdout.write(MARKER + json.dumps(message) + "\n")
    sys.stdout.flush()


async def serve(args: argparse.Namespace) -> None:
    llm = build_engine(args)
    reply({"ready": True, "pid": os.getpid()})
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            command = json.loads(line)
            if command.get("cmd") != "run":
                break
            reply(await run_level(llm, command))
    finally:
        llm.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--served-name", required=True)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    asyncio.run(serve(args))


# The engine core is a spawned process that re-imports this module: guard the entry point.
if __name__ == "__main__":
    main()
