"""What the routes reach through the app: the server state and the services, built with the app."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from server.api.services.chat import ChatService
from server.api.services.completions import CompletionService
from server.api.services.responses import ResponsesService
from server.ops.state import ServerState


@dataclass(frozen=True)
class Services:
    """The per-route request logic; each needs the engine only per call (`serving_engine`)."""

    chat: ChatService
    completions: CompletionService
    responses: ResponsesService


def server_state(request: Request) -> ServerState:
    return request.app.state.server


def services(request: Request) -> Services:
    return request.app.state.services
