"""The OpenAI sampling fields of a request → the engine's typed `SamplingArgs` → its parameters.

The services read the protocol models here, once; the engine sees only `SamplingArgs`. What the
engine refuses (`EngineRejected`: a token id outside the vocabulary, vLLM's own checks) becomes
the client's 400 here, before the request is admitted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from server.api.protocol.requests import SamplingFields
from server.engine import EngineRejected, ModelInfo, SamplingArgs
from server.engine.sampling import build_sampling_params
from server.errors import invalid_request

if TYPE_CHECKING:
    from server.engine.sampling import SamplingParams


def sampling_args(
    request: SamplingFields,
    *,
    max_tokens: int,
    stops: list[str],
    logprobs: int | None = None,
    prompt_logprobs: int | None = None,
    json_schema: dict[str, Any] | None = None,
    json_object: bool = False,
    grammar: str | None = None,
) -> SamplingArgs:
    """The request's sampling knobs, with what its service decided (token budget, stops,
    logprobs, constraint)."""
    return SamplingArgs(
        max_tokens=max_tokens,
        stream=request.stream,
        n=request.n,
        temperature=request.temperature,
        top_p=request.top_p,
        top_k=request.top_k,
        min_p=request.min_p,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        repetition_penalty=request.repetition_penalty,
        seed=request.seed,
        stops=tuple(stops),
        ignore_eos=request.ignore_eos,
        min_tokens=request.min_tokens or 0,
        # The request's keys are validated as integers (`SamplingFields._bias_range`).
        logit_bias={int(token): bias for token, bias in request.logit_bias.items()} if request.logit_bias else None,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        json_schema=json_schema,
        json_object=json_object,
        grammar=grammar,
    )


def engine_params(args: SamplingArgs, info: ModelInfo) -> SamplingParams:
    """The engine's parameters for `args`; what the engine refuses is the client's 400."""
    try:
        return build_sampling_params(args, info)
    except EngineRejected as error:
        raise invalid_request(error.message, param=error.param) from error
