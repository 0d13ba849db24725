"""Request fields → vLLM `SamplingParams`, with the checks that need the loaded model.

`request` is any object with the OpenAI sampling fields (`server.api.protocol.requests.SamplingFields`);
the engine package reads them by name and imports nothing from the HTTP layer.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from server.engine.engine import ModelInfo, as_rejection, client_error_types
from server.errors import invalid_request

# OpenAI's default when neither the request nor the checkpoint's generation config says.
OPENAI_DEFAULT_TEMPERATURE = 1.0


def logit_bias_by_id(logit_bias: dict[str, float] | None, info: ModelInfo) -> dict[int, float] | None:
    if not logit_bias:
        return None
    bias: dict[int, float] = {}
    for key, value in logit_bias.items():
        token_id = int(key)
        if not 0 <= token_id < info.vocab_size:
            raise invalid_request(
                f"logit_bias token id {token_id} is outside the vocabulary (0..{info.vocab_size - 1}).",
                param="logit_bias",
            )
        bias[token_id] = value
    return bias


class SchemaNotCompiled(ValueError):
    """A JSON schema the engine's grammar compiler refuses; `reason` is its own words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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


def structured_outputs(json_schema: dict[str, Any] | None, json_object: bool, grammar: str | None = None) -> Any:
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


def build_sampling_params(
    request: Any,
    *,
    info: ModelInfo,
    max_tokens: int,
    stops: list[str],
    stream: bool,
    logprobs: int | None = None,
    prompt_logprobs: int | None = None,
    json_schema: dict[str, Any] | None = None,
    json_object: bool = False,
    grammar: str | None = None,
) -> Any:
    from vllm.sampling_params import RequestOutputKind, SamplingParams

    defaults = info.sampling_defaults

    def pick(name: str, fallback: Any) -> Any:
        value = getattr(request, name)
        return value if value is not None else defaults.get(name, fallback)

    try:
        return SamplingParams(
            n=request.n,
            temperature=pick("temperature", OPENAI_DEFAULT_TEMPERATURE),
            top_p=pick("top_p", 1.0),
            top_k=pick("top_k", 0),
            min_p=pick("min_p", 0.0),
            presence_penalty=pick("presence_penalty", 0.0),
            frequency_penalty=pick("frequency_penalty", 0.0),
            repetition_penalty=pick("repetition_penalty", 1.0),
            seed=request.seed,
            stop=stops or None,
            ignore_eos=request.ignore_eos,
            max_tokens=max_tokens,
            min_tokens=request.min_tokens or 0,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            logit_bias=logit_bias_by_id(request.logit_bias, info),
            structured_outputs=structured_outputs(json_schema, json_object, grammar),
            # Streams get only what is new each step (merged by vLLM when the reader falls
            # behind); non-streams only the final state.
            output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
            skip_special_tokens=True,
        )
    except client_error_types() as error:
        # vLLM's own checks (e.g. min_tokens above max_tokens) are client mistakes.
        rejection = as_rejection(error)
        raise invalid_request(rejection.message, param=rejection.param) from error


def warmup_params() -> Any:
    """Two greedy tokens, final output only: the generation that proves the engine serves."""
    from vllm.sampling_params import RequestOutputKind, SamplingParams

    return SamplingParams(max_tokens=2, temperature=0.0, output_kind=RequestOutputKind.FINAL_ONLY)


@functools.cache
def _sampling_params_adapter() -> Any:
    from pydantic import TypeAdapter
    from vllm.sampling_params import SamplingParams

    return TypeAdapter(SamplingParams)


def sampling_params_json(params: Any) -> dict[str, Any]:
    """`params` as vLLM's own pydantic models write them (its `GenerateRequest.sampling_params`):
    the fields that differ from vLLM's defaults, JSON types only."""
    return _sampling_params_adapter().dump_python(params, mode="json")
