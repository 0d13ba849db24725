"""`/v1/responses`: Responses API input → the chat route's own rendering and generation.

A Responses request is a chat request in other words: `instructions` is the system message,
`input` the conversation, `max_output_tokens` / `text.format` the chat route's
`max_completion_tokens` / `response_format`. `ResponsesService` says it in those words and hands
the result to `ChatService.prepare`, so the airoboros prompt, the history policy, documents,
stops, constrained decoding and output shaping are the chat route's, not a copy of them. Errors
name the Responses API's fields (`input`, not `messages`).

Function tools are the chat route's too: `tools` (the Responses API's flat shape) become chat
tools, `function_call` input items an assistant message's `tool_calls` (merged into the assistant
message before them), `function_call_output` items `tool` messages. Built-in tools (web search,
file search, computer use...) are a 400 naming the type.

With a responses store (`server.api.services.stored_responses`), `previous_response_id` puts the stored
chain (messages and function call items alike) before the new input, rendered exactly as the
same history sent to chat. What needs a store that is off is refused with a 400 naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from server.api.services.background import BackgroundResponses
from server.api.services.chat import ChatService
from server.api.protocol.requests import ChatCompletionRequest
from server.api.protocol.responses_request import ResponseInputItem, ResponsesRequest
from server.api.services.stored_responses import StoredResponses
from server.engine import Engine
from server.errors import APIError, invalid_request
from server.generation import PreparedGeneration

# Input content parts that are text, in the Responses API's names.
TEXT_PART_TYPES = {"input_text", "output_text", "text"}
# Fields that mean the same on both routes.
SAMPLING_EXTENSIONS = ("seed", "top_k", "min_p", "repetition_penalty", "min_tokens", "ignore_eos")
# The chat route's field names → the Responses API's, for error `param`s.
RESPONSES_PARAMS = {
    "messages": "input",
    "max_completion_tokens": "max_output_tokens",
    "max_tokens": "max_output_tokens",
    "response_format": "text.format",
}


def _unsupported(message: str, param: str) -> APIError:
    return invalid_request(message, param=param, code="unsupported_parameter")


def refuse_unsupported(request: ResponsesRequest, store_on: bool) -> None:
    """A 400 for what needs a store that is off, or a Conversations API."""
    if request.store and not store_on:
        raise _unsupported(
            "store: true is not available: this server's responses store is off (--responses-store none); "
            "send `store: false`, or leave `store` out.",
            "store",
        )
    if request.previous_response_id is not None and request.conversation is not None:
        raise invalid_request(
            "previous_response_id and conversation cannot both be given: a response continues one or the other.",
            param="conversation", code="conflicting_parameters",
        )
    if request.previous_response_id is not None and not store_on:
        raise _unsupported(
            "previous_response_id is not available: this server's responses store is off "
            "(--responses-store none); send the whole conversation in `input`.",
            "previous_response_id",
        )
    if request.conversation is not None:
        raise _unsupported(
            "conversation is not supported: this server has no Conversations API; use "
            "previous_response_id, or send the whole conversation in `input`.",
            "conversation",
        )
    if request.background and (not store_on or request.store is False):
        raise _unsupported(
            "background: true needs the response stored: send store: true (the default) on a server whose "
            "responses store is on.",
            "background",
        )


def chat_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """A Responses API tool in chat's shape; others keep theirs, for chat to refuse by type."""
    if tool.get("type") != "function":
        return tool
    function = {key: tool[key] for key in ("name", "description", "parameters") if key in tool}
    return {"type": "function", "function": function}


def _text_of(output: object) -> object:  # the client's JSON value
    """A `function_call_output`'s output: a string, or its text parts joined."""
    if isinstance(output, list):
        return "\n".join(part.get("text", "") for part in output if isinstance(part, dict))
    return output


def add_input_item(messages: list[dict[str, Any]], position: int, item: ResponseInputItem) -> None:
    """One `input` item onto the chat messages."""
    extra = item.model_extra or {}
    if item.type == "function_call":
        call = {
            "id": extra.get("call_id"), "type": "function",
            "function": {"name": extra.get("name"), "arguments": extra.get("arguments", "{}")},
        }
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        return
    if item.type == "function_call_output":
        messages.append({"role": "tool", "tool_call_id": extra.get("call_id"), "content": _text_of(extra.get("output"))})
        return
    messages.append(input_message(position, item))


def input_message(position: int, item: ResponseInputItem) -> dict[str, Any]:
    """One message `input` item as a chat message; text parts become chat `text` parts."""
    if item.type != "message":
        raise invalid_request(
            f"input[{position}] has type {item.type!r}: only message, function_call and "
            "function_call_output items are accepted (no item references).",
            param="input", code="unsupported_input_item",
        )
    if item.role is None:
        raise invalid_request(f"input[{position}].role is required.", param="input")
    content: object = item.content
    if isinstance(content, list):
        # Other part types (input_image, input_file...) keep their type, so the prompt format
        # refuses them as it refuses them on chat.
        content = [
            {"type": "text", "text": part.text} if part.type in TEXT_PART_TYPES else part.model_dump()
            for part in content
        ]
    return {"role": item.role, "content": content}


def in_responses_terms(error: APIError) -> APIError:
    """A chat error with its `param` in the Responses API's words (`messages...` → `input`)."""
    head = re.split(r"[.\[]", error.param or "", maxsplit=1)[0]
    if head not in RESPONSES_PARAMS:
        return error
    # Message indexes are not the input's (the instructions come first): name the field only.
    param = RESPONSES_PARAMS[head]
    return APIError(error.status, error.message, type=error.type, code=error.code, param=param, headers=error.headers)


class ResponsesService:
    def __init__(
        self, chat: ChatService, stored: StoredResponses | None = None, background: BackgroundResponses | None = None
    ) -> None:
        self.chat = chat
        self.stored = stored or StoredResponses(None)
        self.background = background or BackgroundResponses(self.stored, owner="")

    def check(self, request: ResponsesRequest) -> None:
        """The 400s that need no store or engine: before the chain is read."""
        refuse_unsupported(request, self.stored.enabled)

    def chat_request(
        self, request: ResponsesRequest, history: Sequence[ResponseInputItem] = ()
    ) -> ChatCompletionRequest:
        """The same request in the chat route's words; `history` is the stored chain's items
        (`previous_response_id`), which come before the new input."""
        self.check(request)
        messages: list[dict[str, Any]] = []
        if request.instructions is not None:
            messages.append({"role": "system", "content": request.instructions})
        for position, item in enumerate(history):
            add_input_item(messages, position, item)
        if isinstance(request.input, str):
            messages.append({"role": "user", "content": request.input})
        else:
            for position, item in enumerate(request.input):
                add_input_item(messages, position, item)
        text_format = request.text.format if request.text is not None else None
        history = request.history or ("fit" if request.truncation == "auto" else "error")
        try:
            return ChatCompletionRequest(
                model=request.model,
                messages=messages,
                max_completion_tokens=request.max_output_tokens,
                temperature=request.temperature,
                top_p=request.top_p,
                **{name: getattr(request, name) for name in SAMPLING_EXTENSIONS},
                stream=request.stream,
                response_format=text_format.as_response_format() if text_format is not None else None,
                documents=request.documents,
                plainformat=request.plainformat,
                history=history,
                user=request.user,
                tools=[chat_tool(tool) for tool in request.tools] if request.tools else None,
                tool_choice=request.tool_choice,
                parallel_tool_calls=True if request.parallel_tool_calls is None else request.parallel_tool_calls,
                prompt_cache_key=request.prompt_cache_key,
            )
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first.get("loc", ()))
            raise in_responses_terms(invalid_request(f"Invalid value for '{where}': {first['msg']}.", param=where)) from None

    def prepare(
        self, request: ResponsesRequest, engine: Engine, history: Sequence[ResponseInputItem] = ()
    ) -> PreparedGeneration:
        chat_request = self.chat_request(request, history)
        try:
            return self.chat.prepare(chat_request, engine)
        except APIError as error:
            raise in_responses_terms(error) from error

    def echo(self, request: ResponsesRequest) -> dict[str, Any]:
        """The request's settings as the `response` object repeats them."""
        text_format = request.text.format if request.text is not None else None
        echoed: dict[str, Any] = {
            "instructions": request.instructions,
            "max_output_tokens": request.max_output_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "text": {"format": text_format.echo() if text_format is not None else {"type": "text"}},
            "tool_choice": request.tool_choice or "auto",
            "tools": request.tools or [],
            "parallel_tool_calls": True if request.parallel_tool_calls is None else request.parallel_tool_calls,
            "metadata": request.metadata or {},
            "store": self.stored.will_store(request),
            "background": bool(request.background),
            "previous_response_id": request.previous_response_id,
            "reasoning": None,
            "truncation": request.truncation or "disabled",
        }
        if request.user is not None:
            echoed["user"] = request.user
        return echoed
