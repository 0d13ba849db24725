"""The generation routes' HTTP binding: path → protocol model → service → `serve_generation`.

No generation logic lives here: each route checks the model name, takes the serving engine
(503 while loading or stopping), has its service prepare the request, and names its encoder.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from server.api.chat import DROPPED_MESSAGES_HEADER
from server.api.chat_encoder import ChatEncoder
from server.api.completion_encoder import CompletionEncoder
from server.api.context import server_state, services
from server.api.protocol import ChatCompletionRequest, CompletionRequest, RenderResponse
from server.api.responses_encoder import ResponsesEncoder
from server.api.responses_protocol import ResponsesRequest
from server.api.schemas import (
    API_ERRORS, RESPONSE_EVENT_STREAM, ChatCompletion, Completion, ResponseObject, generation_responses,
)
from server.api.serving import serve_generation
from server.errors import APIError

router = APIRouter()


def _include_usage(body: ChatCompletionRequest | CompletionRequest) -> bool:
    return body.stream_options is not None and body.stream_options.include_usage


def _continuous_usage(body: ChatCompletionRequest | CompletionRequest) -> bool:
    return body.stream_options is not None and body.stream_options.continuous_usage_stats


@router.post("/v1/chat/completions", tags=["chat"], responses=generation_responses(ChatCompletion))
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    state = server_state(request)
    state.check_model(body.model)
    engine = state.serving_engine()
    prepared = services(request).chat.prepare(body, engine)
    return await serve_generation(
        request, state, engine, "/v1/chat/completions", prepared,
        lambda outcome: ChatEncoder(
            request_id=outcome.request_id, model=engine.info.served_name, n=body.n, outcome=outcome,
            token_text=engine.token_text, logprobs=body.logprobs, top_logprobs=body.top_logprobs or 0,
            include_usage=_include_usage(body), continuous_usage=_continuous_usage(body),
            tool_choice=prepared.tool_choice,
        ),
        stream=body.stream,
        prompt=prepared.prompts[0].text,
    )


@router.post("/v1/completions", tags=["completions"], responses=generation_responses(Completion))
async def completions(body: CompletionRequest, request: Request) -> Response:
    state = server_state(request)
    state.check_model(body.model)
    engine = state.serving_engine()
    prepared = services(request).completions.prepare(body, engine)
    return await serve_generation(
        request, state, engine, "/v1/completions", prepared,
        lambda outcome: CompletionEncoder(
            request_id=outcome.request_id, model=engine.info.served_name, prompts=prepared.prompts,
            n=body.n, outcome=outcome, token_text=engine.token_text, echo=body.echo,
            logprobs=body.logprobs, tokens_as_ids=body.return_tokens_as_token_ids,
            include_usage=_include_usage(body), continuous_usage=_continuous_usage(body),
        ),
        stream=body.stream,
        prompt=body.prompts,
    )


@router.post("/v1/chat/render", tags=["chat"], response_model=RenderResponse, responses=API_ERRORS)
async def chat_render(body: ChatCompletionRequest, request: Request) -> JSONResponse:
    state = server_state(request)
    state.check_model(body.model)
    rendered = services(request).chat.render_response(body, state.serving_engine())
    return JSONResponse(rendered.model_dump(), headers={DROPPED_MESSAGES_HEADER: str(rendered.dropped_messages)})


@router.post(
    "/v1/responses", tags=["responses"], responses=generation_responses(ResponseObject, RESPONSE_EVENT_STREAM)
)
async def create_response(body: ResponsesRequest, request: Request) -> Response:
    state = server_state(request)
    state.check_model(body.model)
    engine = state.serving_engine()
    service = services(request).responses
    prepared = service.prepare(body, engine)
    echo = service.echo(body)
    return await serve_generation(
        request, state, engine, "/v1/responses", prepared,
        lambda outcome: ResponsesEncoder(
            request_id=outcome.request_id, model=engine.info.served_name, outcome=outcome, echo=echo,
            tool_choice=prepared.tool_choice,
        ),
        stream=body.stream,
        prompt=prepared.prompts[0].text,
    )


def _no_stored_response(response_id: str) -> APIError:
    return APIError(
        404,
        f"No response '{response_id}': this server is stateless and keeps no responses (store is always false).",
        type="not_found_error", param="response_id", code="response_not_found",
    )


@router.get("/v1/responses/{response_id}", tags=["responses"], responses=API_ERRORS)
async def retrieve_response(response_id: str) -> None:
    raise _no_stored_response(response_id)


@router.delete("/v1/responses/{response_id}", tags=["responses"], responses=API_ERRORS)
async def delete_response(response_id: str) -> None:
    raise _no_stored_response(response_id)
