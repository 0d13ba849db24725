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
from server.api.schemas import API_ERRORS, ChatCompletion, Completion, generation_responses
from server.api.serving import serve_generation

router = APIRouter()


def _include_usage(body: ChatCompletionRequest | CompletionRequest) -> bool:
    return body.stream_options is not None and body.stream_options.include_usage


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
            include_usage=_include_usage(body),
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
            include_usage=_include_usage(body),
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
