"""Typed sampling arguments → vLLM `SamplingParams`, with the checks that need the loaded model.

`api/` fills `SamplingArgs` from its protocol models; the engine package converts them and
imports nothing from the HTTP layer. What the engine refuses raises `EngineRejected`
(`server.engine.errors`), which `api/` turns into the client's 400.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from server.engine.engine import ModelInfo, client_error_types
from server.engine.errors import EngineRejected, SchemaNotCompiled, as_rejection

if TYPE_CHECKING:  # vLLM's types, for annotations only
    from pydantic import TypeAdapter
    from vllm.sampling_params import SamplingParams, StructuredOutputsParams

# OpenAI's default when neither the request nor the checkpoint's generation config says.
OPENAI_DEFAULT_TEMPERATURE = 1.0


@dataclass(frozen=True, slots=True)
class SamplingArgs:
    """How to sample one engine request, in the engine's terms (no HTTP request object).

    A knob left None takes the checkpoint's generation-config default, then OpenAI's.
    `json_schema` is the client's JSON schema (arbitrary JSON, hence `Any` values).
    """

    max_tokens: int
    stream: bool
    n: int = 1
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stops: tuple[str, ...] = ()
    ignore_eos: bool = False
    min_tokens: int = 0
    # Token id → bias; the ids are checked against the vocabulary here.
    logit_bias: Mapping[int, float] | None = None
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    json_schema: dict[str, Any] | None = None
    json_object: bool = False
    grammar: str | None = None


def checked_logit_bias(logit_bias: Mapping[int, float] | None, info: ModelInfo) -> dict[int, float] | None:
    if not logit_bias:
        return None
    for token_id in logit_bias:
        if not 0 <= token_id < info.vocab_size:
            raise EngineRejected(
                f"logit_bias token id {token_id} is outside the vocabulary (0..{info.vocab_size - 1}).",
                param="logit_bias",
            )
    return dict(logit_bias)

def compact_json_grammar(schema: dict[str, Any]) -> str:
    """The grammar (xgrammar's EBNF) of JSON valid against `schema`, written compactly.

    vLLM's `json` constraint lets the model put any whitespace between tokens (its compact mode
    is one engine-wide setting), and a small model may then write spaces until `max_tokens` cuts
    the JSON. Tool calls use this grammar instead: `", "` and `": "` only, the text the prompt
    shows for earlier calls. It is the conversion vLLM itself runs on a `json` constraint, so it
    is also the check that the schema compiles, before the request is admitted. Raises
    `SchemaNotCompiled`.
    """
    return _compact_json_grammar(json.dumps(schema, sort_keys=True))


@functools.lru_cache(maxsize=256)
def _compact_json_grammar(schema_json: str) -> str:
    import xgrammar

    try:
        return str(xgrammar.Grammar.from_json_schema(schema_json, any_whitespace=False))
    except Exception as error:  # noqa: BLE001 - the compiler's errors are all RuntimeErrors of its text
        # "[12:00:00] /project/cpp/json_schema_converter.cc:4944: Unsupported type ..." → the reason.
        reason = re.sub(r"^\[[^\]]*\]\s*\S+:\d+:\s*", "", str(error).strip())
        raise SchemaNotCompiled(reason) from None



def structured_outputs(
    json_schema: dict[str, Any] | None, json_object: bool, grammar: str | None = None
) -> StructuredOutputsParams | None:
    """vLLM's constrained decoding for a JSON schema, any JSON object or a grammar; None for free
    text."""
    if json_schema is None and not json_object and grammar is None:
        return None
    from vllm.sampling_params import StructuredOutputsParams

    if grammar is not None:
        return StructuredOutputsParams(grammar=grammar)
    if json_schema is not None:
        return StructuredOutputsParams(json=json_schema)
    return StructuredOutputsParams(json_object=True)


def build_sampling_params(args: SamplingArgs, info: ModelInfo) -> SamplingParams:
    """vLLM's `SamplingParams` for `args`; raises `EngineRejected` for what the engine refuses."""
    from vllm.sampling_params import RequestOutputKind, SamplingParams

    defaults = info.sampling_defaults
    logit_bias = checked_logit_bias(args.logit_bias, info)  # before vLLM's checks: its own words

    def pick(value: float | None, name: str, fallback: float) -> float:
        return value if value is not None else defaults.get(name, fallback)

    try:
        return SamplingParams(
            n=args.n,
            temperature=pick(args.temperature, "temperature", OPENAI_DEFAULT_TEMPERATURE),
            top_p=pick(args.top_p, "top_p", 1.0),
            top_k=int(pick(args.top_k, "top_k", 0)),
            min_p=pick(args.min_p, "min_p", 0.0),
            presence_penalty=pick(args.presence_penalty, "presence_penalty", 0.0),
            frequency_penalty=pick(args.frequency_penalty, "frequency_penalty", 0.0),
            repetition_penalty=pick(args.repetition_penalty, "repetition_penalty", 1.0),
            seed=args.seed,
            stop=list(args.stops) or None,
            ignore_eos=args.ignore_eos,
            max_tokens=args.max_tokens,
            min_tokens=args.min_tokens,
            logprobs=args.logprobs,
            prompt_logprobs=args.prompt_logprobs,
            logit_bias=logit_bias,
            structured_outputs=structured_outputs(args.json_schema, args.json_object, args.grammar),
            # Streams get only what is new each step (merged by vLLM when the reader falls
            # behind); non-streams only the final state.
            output_kind=RequestOutputKind.DELTA if args.stream else RequestOutputKind.FINAL_ONLY,
            skip_special_tokens=True,
        )
    except client_error_types() as error:
        # vLLM's own checks (e.g. min_tokens above max_tokens) are client mistakes.
        raise as_rejection(error) from error

def warmup_params() -> SamplingParams:
    """Two greedy tokens, final output only: the generation that proves the engine serves."""
    from vllm.sampling_params import RequestOutputKind, SamplingParams

    return SamplingParams(max_tokens=2, temperature=0.0, output_kind=RequestOutputKind.FINAL_ONLY)


@functools.cache
def _sampling_params_adapter() -> TypeAdapter[SamplingParams]:
    from pydantic import TypeAdapter
    from vllm.sampling_params import SamplingParams

    return TypeAdapter(SamplingParams)


def sampling_params_json(params: SamplingParams) -> dict[str, Any]:
    """`params` as vLLM's own pydantic models write them (its `GenerateRequest.sampling_params`):
    the fields that differ from vLLM's defaults, JSON types only."""
    return _sampling_params_adapter().dump_python(params, mode="json")
