"""What holding an answer to the tools' schema costs, and how often calls come out valid.

    .venv/bin/python -m bench.tool_calls --url http://127.0.0.1:8000
    .venv/bin/python -m bench.tool_calls --url http://127.0.0.1:8000 --schemas 200   # validity

Speed: the same chat, answered `--rounds` times at each concurrency, once as free text (a fixed
`max_tokens`, `ignore_eos`) and once as a `required` tool call whose one string argument may be as
long as the free text (so both write about as many tokens); prints the decode rate (completion
tokens per second of wall time) of each and the ratio.

Validity (`--schemas N`): N random tool schemas (harness/json_schemas.py: enums, required
keys, nesting, arrays, numeric bounds, `additionalProperties: false`), one `required` call each,
concurrently; prints how many calls validate against their schema (jsonschema), and how many the
token limit cut (`finish_reason: length`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import openai

QUESTION = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
STORY_TOOL = [{
    "type": "function",
    "function": {
        "name": "tell",
        "parameters": {
            "type": "object",
            "properties": {"story": {"type": "string", "minLength": 600}},
            "required": ["story"],
            "additionalProperties": False,
        },
    },
}]


async def decode_rate(client: openai.AsyncOpenAI, model: str, concurrency: int, rounds: int, tokens: int, tools: bool) -> float:
    extra = {"tools": STORY_TOOL, "tool_choice": "required", "parallel_tool_calls": False} if tools else {}

    async def one(seed: int) -> int:
        reply = await client.chat.completions.create(
            model=model, messages=QUESTION, max_tokens=tokens, seed=seed, extra_body={"ignore_eos": True}, **extra
        )
        return reply.usage.completion_tokens

    started, total = time.monotonic(), 0
    for round_number in range(rounds):
        counts = await asyncio.gather(*(one(round_number * concurrency + i) for i in range(concurrency)))
        total += sum(counts)
    return total / (time.monotonic() - started)


async def validity(client: openai.AsyncOpenAI, model: str, count: int, tokens: int) -> None:
    import jsonschema
    from hypothesis import HealthCheck, given, settings

    from harness.json_schemas import parameters

    schemas: list[dict] = []

    @settings(max_examples=count, database=None, suppress_health_check=list(HealthCheck))
    @given(parameters)
    def collect(schema: dict) -> None:
        schemas.append(schema)

    collect()
    limit = asyncio.Semaphore(16)

    async def call(seed: int, schema: dict) -> str:
        tools = [{"type": "function", "function": {"name": "act", "parameters": schema}}]
        async with limit:
            choice = (await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "Call the function."}], tools=tools,
                tool_choice="required", parallel_tool_calls=False, max_tokens=tokens, seed=seed,
            )).choices[0]
        if choice.finish_reason == "length":
            return "cut"
        try:
            jsonschema.validate(json.loads(choice.message.tool_calls[0].function.arguments), schema)
        except (jsonschema.ValidationError, ValueError, IndexError, TypeError):
            return "invalid"
        return "valid"

    outcomes = await asyncio.gather(*(call(seed, schema) for seed, schema in enumerate(schemas)))
    print(f"{len(schemas)} schemas: {outcomes.count('valid')} valid, {outcomes.count('invalid')} invalid, "
          f"{outcomes.count('cut')} cut by max_tokens={tokens}")


async def main(args: argparse.Namespace) -> None:
    client = openai.AsyncOpenAI(base_url=args.url.rstrip("/") + "/v1", api_key="unused", max_retries=0)
    model = (await client.models.list()).data[0].id
    if args.schemas:
        await validity(client, model, args.schemas, args.validity_tokens)
        return
    for concurrency in args.levels:
        free = await decode_rate(client, model, concurrency, args.rounds, args.tokens, tools=False)
        held = await decode_rate(client, model, concurrency, args.rounds, args.tokens, tools=True)
        print(f"concurrency {concurrency}: free text {free:.1f} tok/s, tool call {held:.1f} tok/s "
              f"({held / free:.2f}x)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.tool_calls", description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="our server, already running")
    parser.add_argument("--levels", type=lambda text: [int(x) for x in text.split(",")], default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--schemas", type=int, default=0, help="measure validity over this many random schemas")
    parser.add_argument("--validity-tokens", type=int, default=512)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
