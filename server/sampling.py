"""Request fields → vLLM `SamplingParams`, with the checks that need the loaded model."""

from __future__ import annotations

from typing import Any

from server.engine import ModelInfo, as_rejection, client_error_types
from server.errors import invalid_request
from server.protocol import ResponseFormat, SamplingFields
from server.settings import Settings

# OpenAI's default when neither the request nor the checkpoint's generation config says.
OPENAI_DEFAULT_TEMPERATURE = 1.0


def check_n(request: SamplingFields, settings: Settings) -> None:
    if request.n > settings.max_n:
        raise invalid_request(
            f"n={request.n} is more than this server allows ({settings.max_n}).", param="n"
        )


def logit_bias_by_id(request: SamplingFields, info: ModelInfo) -> dict[int, float] | None:
    if not request.logit_bias:
        return None
    bias: dict[int, float] = {}
    for key, value in request.logit_bias.items():
        token_id = int(key)
        if not 0 <= token_id < info.vocab_size:
            raise invalid_request(
                f"logit_bias token id {token_id} is outside the vocabulary (0..{info.vocab_size - 1}).",
                param="logit_bias",
            )
        bias[token_id] = value
    return bias


def structured_outputs(response_format: ResponseFormat | None) -> Any:
    if response_format is None or response_format.type == "text":
        return None
    from vllm.sampling_params import StructuredOutputsParams

    if response_format.type == "json_object":
        return StructuredOutputsParams(json_object=True)
    assert response_format.json_schema is not None
    return StructuredOutputsParams(json=response_format.json_schema.schema_)


def build_sampling_params(
    request: SamplingFields,
    *,
    info: ModelInfo,
    max_tokens: int,
    stops: list[str],
    stream: bool,
    logprobs: int | None = None,
    prompt_logprobs: int | None = None,
    response_format: ResponseFormat | None = None,
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
            logit_bias=logit_bias_by_id(request, info),
            structured_outputs=structured_outputs(response_format),
            # Streams get only what is new each step; non-streams only the final state.
            output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
            skip_special_tokens=True,
        )
    except client_error_types() as error:
        # vLLM's own checks (e.g. min_tokens above max_tokens) are client mistakes.
        rejection = as_rejection(error)
        raise invalid_request(rejection.message, param=rejection.param) from error
