"""The FastAPI application, and the one place its parts are built: state, services, lifecycle,
routes, error handlers and middlewares."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from prompt_formats import get_format

from server import __version__
from server.api.routes import generation, render, server_info, tokenization
from server.api.services.chat import DROPPED_MESSAGES_HEADER, ChatService
from server.api.services.completions import CompletionService
from server.api.context import Services
from server.api.middleware import ApiKeyMiddleware, BodyLimitMiddleware, RequestContextMiddleware
from server.api.services.background import STALE_S, BackgroundResponses, owner_name
from server.api.services.responses import ResponsesService
from server.api.services.stored_responses import StoredResponses
from server.errors import install_error_handlers
from server.metrics import Metrics
from server.ops.lifecycle import Lifecycle
from server.ops.state import Phase, ServerState
from server.settings import Settings
from server.store import StoreArchive, StoreLimits, StoreUnavailable, open_archive

logger = logging.getLogger(__name__)


# After the drain's deadline, what background responses get to store their end.
BACKGROUND_WAIT_MARGIN_S = 10.0
# Response headers a browser page may read (CORS hides all but a few by default).
EXPOSED_HEADERS = ["X-Request-Id", "Retry-After", DROPPED_MESSAGES_HEADER]


def served_model_name(settings: Settings) -> str:
    if settings.served_model_name:
        return settings.served_model_name
    if settings.model is None:
        from server.engine.default_model import SERVED_NAME

        return SERVED_NAME
    return settings.model.resolve().name


async def open_responses_store(archive: StoreArchive, owner: str) -> bool:
    """Connect (and create the schema) before serving; False when the server must not start.

    A SQLite file that cannot be opened is the operator's to fix: the start fails, naming the
    settings. A database that is down is not fatal: stored requests get 503 until it answers
    (each tries again), stateless ones go on."""
    try:
        await archive.open()
    except StoreUnavailable:
        if archive.description.startswith("sqlite"):
            logger.error(
                "the responses store (%s) cannot be opened: give --data-dir or --responses-store a "
                "writable place (a volume), or set --responses-store to postgresql://... or none",
                archive.description,
            )
            return False
        logger.warning(
            "the responses store (%s) is not reachable yet; stored requests get 503 until it is",
            archive.description,
        )
        return True
    logger.info("responses store: %s", archive.description)
    try:
        stale = await archive.mark_stale(owner, time.time() - STALE_S)
    except StoreUnavailable:
        stale = 0  # marked at a later start
    if stale:
        logger.warning("%d background responses left running by a stopped server are now failed", stale)
    return True


def create_app(
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    request_exit: Callable[[int], None] | None = None,
) -> FastAPI:
    state = ServerState(settings=settings, metrics=metrics or Metrics(), served_name=served_model_name(settings))
    chat = ChatService(settings, get_format(settings.prompt_format))
    archive = open_archive(
        settings.responses_store,
        StoreLimits(ttl_s=settings.responses_ttl, max_bytes=settings.responses_max_bytes),
        settings.resolved_data_dir(),
        state.metrics,
    )
    stored = StoredResponses(archive)
    background = BackgroundResponses(stored, owner_name(settings.port))
    responses = ResponsesService(chat, stored, background)
    services = Services(chat=chat, completions=CompletionService(settings), responses=responses)
    lifecycle = Lifecycle(state, request_exit, engine_started=[services.chat.use_engine])

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if archive is not None and not await open_responses_store(archive, background.owner):
            state.advance(Phase.DEAD)
            (request_exit or (lambda code: None))(1)
        else:
            await lifecycle.start()
        try:
            yield
        finally:
            # Background responses run until the drain's deadline interrupts them (then `incomplete`).
            await background.wait(settings.drain_timeout + BACKGROUND_WAIT_MARGIN_S)
            await lifecycle.stop()
            if archive is not None:
                await archive.close()

    app = FastAPI(
        title="airoboros-server",
        version=__version__,
        description="OpenAI-compatible API for airoboros-mpt-30b-gpt4-1p4 on vLLM.",
        lifespan=lifespan,
    )
    app.state.server = state
    app.state.lifecycle = lifecycle
    app.state.services = services
    app.include_router(generation.router)
    app.include_router(render.router)
    app.include_router(tokenization.router)
    app.include_router(server_info.router)
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
