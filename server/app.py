"""The FastAPI application: routes, error handlers, middlewares and the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from server import __version__
from server.errors import install_error_handlers
from server.lifecycle import Lifecycle
from server.metrics import Metrics
from server.middleware import ApiKeyMiddleware, BodyLimitMiddleware, RequestContextMiddleware
from server.routes import router
from server.settings import Settings
from server.state import ServerState


def served_model_name(settings: Settings) -> str:
    if settings.served_model_name:
        return settings.served_model_name
    if settings.model is None:
        from server.default_model import SERVED_NAME

        return SERVED_NAME
    return settings.model.resolve().name


def create_app(
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    request_exit: Callable[[int], None] | None = None,
) -> FastAPI:
    state = ServerState(settings=settings, metrics=metrics or Metrics(), served_name=served_model_name(settings))
    lifecycle = Lifecycle(state, request_exit)

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
    app.include_router(router)
    install_error_handlers(app)
    # Added innermost first: the request id wraps everything, so even a 401 or 413 carries it.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(ApiKeyMiddleware, keys=settings.load_api_keys())
    app.add_middleware(RequestContextMiddleware, metrics=state.metrics)
    return app
