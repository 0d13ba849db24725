"""Response models for `/openapi.json`: what each route answers, for clients and schema tools.

The routes build their bodies as plain dicts (cheaper per token than validating models on the
hot path); these models only document those bodies. The tests validate real responses against
both these models (through schemathesis) and OpenAI's own published schemas.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatMessageOut(BaseModel):
    role: Literal["assistant"]
    content: str | None
    refusal: None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: dict[str, Any] | None
    finish_reason: str | None
    stop_reason: int | str | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: dict[str, Any] | None
    finish_reason: str | None
    stop_reason: int | str | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str
    max_model_len: int | None
    prompt_format: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Health(BaseModel):
    status: str


class VersionInfo(BaseModel):
    version: str
    engine: str
    engine_version: str


_ERROR = {"model": ErrorResponse}
# Every /v1 route can answer these (auth, body limit, validation, overload, unavailability).
API_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {**_ERROR, "description": "Invalid request"},
    401: {**_ERROR, "description": "Missing or wrong API key"},
    404: {**_ERROR, "description": "Unknown model"},
    413: {**_ERROR, "description": "Body too large"},
    429: {**_ERROR, "description": "Server at capacity"},
    500: {**_ERROR, "description": "Unexpected server fault"},
    503: {**_ERROR, "description": "Loading, draining, or engine stopped"},
    504: {**_ERROR, "description": "Request timed out"},
}

# One server-sent event: `data` holds a chunk's JSON, an error object, or `[DONE]` last.
EVENT_STREAM = {
    "text/event-stream": {
        "schema": {
            "type": "object",
            "description": "SSE: `data: <chunk JSON>` events, then `data: [DONE]`; `: keep-alive` comments between.",
            "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
            "required": ["data"],
        }
    }
}


def generation_responses(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """A JSON body, or an SSE stream when the request sets `stream: true`."""
    return {
        200: {"model": model, "content": EVENT_STREAM, "description": "JSON, or SSE when streaming"},
        499: {"description": "The client went away before the answer (nothing is sent)"},
        **API_ERRORS,
    }
