"""The generation routes' HTTP binding: path → protocol model → service → `serve_generation`.

No generation logic lives here: each route checks the model name, takes the serving engine
(503 while loading or stopping), has its service prepare the request, and names its encoder.
"""

from __future__ import annotations

import time
from typing import Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from server.api.context import server_state, services
from server.api.encoders.chat import ChatEncoder
from server.api.encoders.completions import CompletionEncoder
from server.api.encoders.responses import ResponsesEncoder
from server.api.protocol.requests import ChatCompletionRequest, CompletionRequest, RenderResponse
from server.api.protocol.response_bodies import (
    API_ERRORS, RESPONSE_EVENT_STREAM, ChatCompletion, Completion, DeletedResponse, ResponseInputItemList,
    ResponseObject, generation_responses,
)
from server.api.protocol.responses_request import ResponsesRequest
from server.api.serving import serve_generation
from server.api.services.background import background_generation
from server.api.services.background_stream import check_streamed, follow_store
from server.api.services.chat import DROPPED_MESSAGES_HEADER
from server.api.services.stored_responses import input_items_page, new_response_id, stored_input_items
from server.api.sse import sse_response
from server.generation import Outcome

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
            request_id=outcome.request_id, model=state.served_name, n=body.n, outcome=outcome,
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
            request_id=outcome.request_id, model=state.served_name, prompts=prepared.prompts,
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
    service = services(request).responses
    service.check(body)
    engine = state.serving_engine()
    history = await service.stored.history(body)
    prepared = service.prepare(body, engine, history)
    echo = service.echo(body)
    response_id = new_response_id()
    encoders: list[ResponsesEncoder] = []

    def make_encoder(outcome: Outcome) -> ResponsesEncoder:
        encoders.append(
            ResponsesEncoder(
                response_id=response_id, model=state.served_name, outcome=outcome, echo=echo,
                tool_choice=prepared.tool_choice,
            )
        )
        return encoders[0]

    if body.background:
        generation, encoder, outcome = background_generation(
            state, engine, prepared, make_encoder, request.state.request_id
        )
        started = await service.background.start(
            state, generation, encoder, outcome, body.previous_response_id, stored_input_items(body),
            stream=bool(body.stream),
        )
        if body.stream:  # its client follows the event log; leaving does not stop the generation
            return sse_response(
                service.background.logs[response_id].follow(-1), ping_seconds=state.settings.sse_ping_seconds
            )
        return JSONResponse(started)

    save = None
    if service.stored.will_store(body):
        input_items = stored_input_items(body)

        async def save() -> None:
            await service.stored.save(body, input_items, encoders[0].final or {})

    return await serve_generation(
        request, state, engine, "/v1/responses", prepared, make_encoder,
        stream=body.stream,
        prompt=prepared.prompts[0].text,
        before_final=save,
    )


@router.get(
    "/v1/responses/{response_id}", tags=["responses"], response_model=ResponseObject,
    responses=generation_responses(ResponseObject, RESPONSE_EVENT_STREAM),
)
async def retrieve_response(
    response_id: str,
    request: Request,
    stream: bool = Query(False, description="Stream the events of a `background` response created with `stream`."),
    starting_after: int = Query(
        -1, ge=-1, description="With `stream`: replay the events after this sequence number, then follow."
    ),
) -> Response:
    service = services(request).responses
    if not stream:
        record = await service.stored.get(response_id)
        return JSONResponse(record.response)
    state = server_state(request)
    log = service.background.logs.get(response_id)
    if log is not None:  # running here: follow it in memory
        events = log.follow(starting_after)
    else:
        await check_streamed(service.stored, response_id)
        deadline = time.monotonic() + state.settings.request_timeout
        events = follow_store(service.stored, response_id, starting_after, deadline)
    return sse_response(events, ping_seconds=state.settings.sse_ping_seconds)


@router.post(
    "/v1/responses/{response_id}/cancel", tags=["responses"], response_model=ResponseObject, responses=API_ERRORS
)
async def cancel_response(response_id: str, request: Request) -> JSONResponse:
    service = services(request).responses
    record = await service.stored.cancel(response_id)
    service.background.cancel_here(response_id)
    return JSONResponse(record.response)


@router.delete("/v1/responses/{response_id}", tags=["responses"], response_model=DeletedResponse, responses=API_ERRORS)
async def delete_response(response_id: str, request: Request) -> JSONResponse:
    await services(request).responses.stored.delete(response_id)
    return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})


@router.get(
    "/v1/responses/{response_id}/input_items", tags=["responses"], response_model=ResponseInputItemList,
    responses=API_ERRORS,
)
async def list_input_items(
    response_id: str,
    request: Request,
    after: str | None = Query(None, description="List the items after the one with this id."),
    limit: int = Query(20, ge=1, le=100, description="Items per page, 1 to 100."),
    order: Literal["asc", "desc"] = Query("desc", description="desc: the last input item first (OpenAI's default)."),
) -> JSONResponse:
    record = await services(request).responses.stored.get(response_id)
    return JSONResponse(input_items_page(record.input_items, after=after, limit=limit, order=order))
