"""vLLM's render routes (`vllm/entrypoints/scale_out/render/`): a request in, the engine request
out, as vLLM 0.32's `GenerateRequest` (`token_ids`, `sampling_params`, `model`, ...).

The Kubernetes inference gateway's exact-prefix scorer tokenizes each request through them, then
matches the blocks against the replicas' KV events, so `token_ids` must be exactly what our
engine will be given: each route runs its generating route's own `prepare` (rendering, documents,
PLAINFORMAT, history fit, BOS, validation) and answers its engine prompts. Nothing is generated
and nothing is admitted; the errors are the generating route's. vLLM cannot render this model's
chats (it has no chat template); these routes can, exactly.

`prompt_cache_key` (OpenAI's cache-routing hint) rides along as an extra top-level field, which
vLLM's `GenerateRequest` ignores and a router may group by. `/v1/chat/render` (api/routes/generation.py) is
our own richer shape and stays as it is.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from server.api.context import server_state, services
from server.api.protocol.requests import ChatCompletionRequest, CompletionRequest
from server.api.protocol.responses_request import ResponsesRequest
from server.api.protocol.response_bodies import API_ERRORS
from server.engine.sampling import sampling_params_json
from server.generation import EnginePrompt, PreparedGeneration

router = APIRouter()


class GenerateRequestBody(BaseModel):
    """What these routes answer: the fields of vLLM's `GenerateRequest` this server fills."""

    request_id: str
    token_ids: list[int]
    sampling_params: dict[str, Any]
    model: str
    stream: bool
    stream_options: dict[str, Any] | None
    priority: int
    prompt_cache_key: str | None


def generate_request(
    request_id: str, prompt: EnginePrompt, *, model: str, stream: bool,
    stream_options: BaseModel | None, prompt_cache_key: str | None,
) -> dict[str, Any]:
    """One engine prompt as vLLM's `GenerateRequest` JSON."""
    return {
        "request_id": request_id,
        "token_ids": list(prompt.token_ids),
        "sampling_params": sampling_params_json(prompt.params),
        "model": model,
        "stream": stream,
        "stream_options": stream_options.model_dump() if stream and stream_options is not None else None,
        "priority": 0,
        "prompt_cache_key": prompt_cache_key,
    }


def _answer(body: dict[str, Any] | list[dict[str, Any]], prepared: PreparedGeneration) -> JSONResponse:
    return JSONResponse(body, headers=prepared.headers)


@router.post(
    "/v1/chat/completions/render", tags=["chat"], response_model=GenerateRequestBody, responses=API_ERRORS
)
async def render_chat_completion(body: ChatCompletionRequest, request: Request) -> JSONResponse:
    state = server_state(request)
    state.check_model(body.model)
    prepared = services(request).chat.prepare(body, state.serving_engine())
    return _answer(
        generate_request(
            f"chatcmpl-{request.state.request_id}", prepared.prompts[0], model=body.model, stream=body.stream,
            stream_options=body.stream_options, prompt_cache_key=body.prompt_cache_key,
        ),
        prepared,
    )


@router.post(
    "/v1/completions/render", tags=["completions"], response_model=list[GenerateRequestBody], responses=API_ERRORS
)
async def render_completion(body: CompletionRequest, request: Request) -> JSONResponse:
    state = server_state(request)
    state.check_model(body.model)
    prepared = services(request).completions.prepare(body, state.serving_engine())
    # One engine request per prompt, numbered as vLLM numbers them when there are several.
    base_id = f"cmpl-{request.state.request_id}"
    return _answer(
        [
            generate_request(
                base_id if len(prepared.prompts) == 1 else f"{base_id}-{index}", prompt, model=body.model,
                stream=body.stream, stream_options=body.stream_options, prompt_cache_key=body.prompt_cache_key,
            )
            for index, prompt in enumerate(prepared.prompts)
        ],
        prepared,
    )


@router.post(
    "/v1/responses/render", tags=["responses"], response_model=GenerateRequestBody, responses=API_ERRORS
)
async def render_response(body: ResponsesRequest, request: Request) -> JSONResponse:
    state = server_state(request)
    state.check_model(body.model)
    service = services(request).responses
    service.check(body)
    engine = state.serving_engine()
    # The stored chain too: a router sees the token ids the engine will get.
    prepared = service.prepare(body, engine, await service.stored.history(body))
    return _answer(
        generate_request(
            f"resp_{request.state.request_id}", prepared.prompts[0], model=body.model, stream=body.stream,
            stream_options=None, prompt_cache_key=body.prompt_cache_key,
        ),
        prepared,
    )
