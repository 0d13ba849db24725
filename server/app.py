"""The FastAPI application, and the one place its parts are built: state, services, lifecycle,
routes, error handlers and middlewares."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from prompt_formats import get_format

from server import __version__
from server.api import operations, render, routes, tokenization
from server.api.chat import DROPPED_MESSAGES_HEADER, ChatService
from server.api.completions import CompletionService
from server.api.context import Services
from server.api.middleware import ApiKeyMiddleware, BodyLimitMiddleware, RequestContextMiddleware
from server.api.responses import ResponsesService
from server.errors import install_error_handlers
from server.metrics import Metrics
from server.ops.lifecycle import Lifecycle
from server.ops.state import ServerState
from server.settings import Settings


# Response headers a browser page may read (CORS hides all but a few by default).
EXPOSED_HEADERS = ["X-Request-Id", "Retry-After", DROPPED_MESSAGES_HEADER]


def served_model_name(settings: Settings) -> str:
    if settings.served_model_name:
        return settings.served_model_name
    if settings.model is None:
        from server.engine.default_model import SERVED_NAME

        return SERVED_NAME
    return settings.model.resolve().name


def create_app(
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    request_exit: Callable[[int], None] | None = None,
) -> FastAPI:
    state = ServerState(settings=settings, metrics=metrics or Metrics(), served_name=served_model_name(settings))
    chat = ChatService(settings, get_format(settings.prompt_format))
    services = Services(chat=chat, completions=CompletionService(settings), responses=ResponsesService(chat))
    lifecycle = Lifecycle(state, request_exit, engine_started=[services.chat.use_engine])

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await lifecycle.start()
        try:
            yield
        finally:
            await lifecycle.stop()

    app = FastAPI(
        title="airoboros-server",
        version=__version__,
        description="OpenAI-compatible API for airoboros-mpt-30b-gpt4-1p4 on vLLM.",
        lifespan=lifespan,
    )
    app.state.server = state
    app.state.lifecycle = lifecycle
    app.state.services = services
    app.include_router(routes.router)
    app.include_router(render.router)
    app.include_router(tokenization.router)
    app.include_router(operations.router)
    install_error_handlers(app)
    # Added innermost first: the request id wraps everything, so even a 401 or 413 carries it.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(ApiKeyMiddleware, keys=settings.load_api_keys())
    if settings.allowed_origins:
        # Outside the API key check: a browser's preflight carries no key, and a 401 needs the
        # CORS headers too, or the page cannot read why it failed.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.allowed_origins,
            allow_methods=settings.allowed_methods,
            allow_headers=settings.allowed_headers,
            expose_headers=EXPOSED_HEADERS,
        )
    app.add_middleware(RequestContextMiddleware, metrics=state.metrics)
    return app
