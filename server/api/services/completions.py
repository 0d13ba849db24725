"""`/v1/completions`: a raw prompt (or several) straight to the engine, no chat rendering.

A list of prompts becomes one engine request per prompt, run concurrently; choice indexes go
prompt-major (`prompt_index * n + sample_index`), as OpenAI numbers them.
"""

from __future__ import annotations

from server.api.protocol.requests import CompletionRequest
from server.api.services.sampling import engine_params, sampling_args
from server.api.services.validation import check_n, context_length_error
from server.engine import Engine
from server.errors import invalid_request
from server.generation import EnginePrompt, PreparedGeneration
from server.settings import Settings


class CompletionService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def prepare(self, request: CompletionRequest, engine: Engine) -> PreparedGeneration:
        check_n(request.n, self.settings)
        if request.suffix:
            raise invalid_request("suffix is not supported by this model.", param="suffix")
        if request.best_of is not None and request.best_of != request.n:
            raise invalid_request("best_of is not supported; use n.", param="best_of")
        max_model_len = engine.info.max_model_len
        asked = request.requested_max_tokens
        response_format = request.response_format
        prompts = []
        for text in request.prompts:
            token_ids = engine.tokenize(text)
            if not token_ids:
                raise invalid_request("prompt must not be empty.", param="prompt")
            if len(token_ids) + (asked or 1) > max_model_len:
                raise context_length_error(max_model_len, len(token_ids), asked, what="prompt", param="prompt")
            args = sampling_args(
                request,
                max_tokens=asked or min(self.settings.default_max_tokens, max_model_len - len(token_ids)),
                stops=[request.stop] if isinstance(request.stop, str) else list(request.stop or []),
                logprobs=request.logprobs,
                prompt_logprobs=request.logprobs if request.echo and request.logprobs is not None else None,
                json_schema=response_format.schema_dict if response_format else None,
                json_object=bool(response_format and response_format.type == "json_object"),
            )
            prompts.append(EnginePrompt(token_ids, text, engine_params(args, engine.info)))
        return PreparedGeneration(prompts=prompts, n=request.n)
