"""Response models for `/openapi.json`: what each route answers, for clients and schema tools.

The routes build their bodies as plain dicts (cheaper per token than validating models on the
hot path); these models only document those bodies. The tests validate real responses against
both these models (through schemathesis) and OpenAI's own published schemas.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class PromptTokensDetails(BaseModel):
    cached_tokens: int  # prompt tokens found in the engine's prefix cache
    cache_write_tokens: int  # prompt tokens newly written to it


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class ToolCallFunction(BaseModel):
    name: str
    arguments: str  # JSON valid against the tool's parameters


class ToolCall(BaseModel):
    id: str
    type: Literal["function"]
    function: ToolCallFunction


class ChatMessageOut(BaseModel):
    role: Literal["assistant"]
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCall] | None = None  # present when the model called tools


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


class ResponseOutputText(BaseModel):
    type: Literal["output_text"]
    text: str
    annotations: list[Any]
    logprobs: list[Any]


class ResponseOutputMessage(BaseModel):
    id: str
    type: Literal["message"]
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"]
    content: list[ResponseOutputText]


class ResponseFunctionCall(BaseModel):
    id: str
    type: Literal["function_call"]
    status: Literal["in_progress", "completed", "incomplete"]
    call_id: str
    name: str
    arguments: str


class ResponseInputTokensDetails(BaseModel):
    cached_tokens: int
    cache_write_tokens: int


class ResponseOutputTokensDetails(BaseModel):
    reasoning_tokens: int


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: ResponseInputTokensDetails
    output_tokens: int
    output_tokens_details: ResponseOutputTokensDetails
    total_tokens: int


class ResponseIncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens", "interrupted"]


class ResponseObject(BaseModel):
    """OpenAI's `response` object; the request's settings are repeated in it."""

    id: str
    object: Literal["response"]
    created_at: int
    completed_at: int | None
    status: Literal["queued", "in_progress", "completed", "incomplete", "failed", "cancelled"]
    error: dict[str, Any] | None
    incomplete_details: ResponseIncompleteDetails | None
    model: str
    output: list[ResponseOutputMessage | ResponseFunctionCall]
    usage: ResponseUsage | None = None  # absent while in progress
    instructions: str | None
    max_output_tokens: int | None
    temperature: float | None
    top_p: float | None
    text: dict[str, Any]
    tool_choice: str | dict[str, Any]
    tools: list[Any]
    parallel_tool_calls: bool
    metadata: dict[str, str]
    store: bool
    background: bool
    previous_response_id: str | None
    reasoning: None
    truncation: Literal["auto", "disabled"]
    user: str | None = None


class ResponseInputItemObject(BaseModel):
    """An input item as a stored response lists it."""

    model_config = ConfigDict(extra="allow")
    id: str
    type: Literal["message"]
    role: str
    content: list[dict[str, Any]]
    status: str


class ResponseInputItemList(BaseModel):
    object: Literal["list"]
    data: list[ResponseInputItemObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response.deleted"]
    deleted: Literal[True]


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeResponse(BaseModel):
    prompt: str


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

CHUNK_STREAM = "SSE: `data: <chunk JSON>` events, then `data: [DONE]`; `: keep-alive` comments between."
# The Responses API's stream (server/api/encoders/responses.py has the order).
RESPONSE_EVENT_STREAM = (
    "SSE: typed events, `event: <type>` then `data: <event JSON>` with its `sequence_number`: "
    "response.created, response.in_progress, response.output_item.added, response.content_part.added, "
    "response.output_text.delta..., response.output_text.done, response.content_part.done, "
    "response.output_item.done, response.completed (or response.incomplete); a tool call is its own "
    "item: response.output_item.added, response.function_call_arguments.delta..., "
    "response.function_call_arguments.done, response.output_item.done; an `error` event on a "
    "failure; no [DONE]; `: keep-alive` comments between."
)


def event_stream(description: str) -> dict[str, Any]:
    """One server-sent event: `data` holds its JSON (or `[DONE]`), `event` its type if typed."""
    return {
        "text/event-stream": {
            "schema": {
                "type": "object",
                "description": description,
                "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
                "required": ["data"],
            }
        }
    }


def generation_responses(model: type[BaseModel], stream: str = CHUNK_STREAM) -> dict[int | str, dict[str, Any]]:
    """A JSON body, or an SSE stream when the request sets `stream: true`."""
    return {
        200: {"model": model, "content": event_stream(stream), "description": "JSON, or SSE when streaming"},
        499: {"description": "The client went away before the answer (nothing is sent)"},
        **API_ERRORS,
    }
