"""`/tokenize` and `/detokenize`, with vLLM's request and response shapes.

A chat (`messages`) is tokenized by the chat route's own rendering (`ChatService.render`), so its
tokens are exactly the prompt chat sends to the engine (`/v1/chat/render`'s `token_ids`); a
`prompt` is tokenized as the completions route sends it. Like vLLM, these live at the root, not
under /v1/; the API key guards them all the same (`server.api.middleware`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from server.api.context import server_state, services
from server.api.protocol.requests import ChatCompletionRequest, DetokenizeRequest, TokenizeRequest
from server.api.protocol.response_bodies import API_ERRORS, DetokenizeResponse, TokenizeResponse
from server.engine import Engine
from server.errors import invalid_request
from server.ops.state import ServerState

router = APIRouter()


def chat_request(body: TokenizeRequest, model: str) -> ChatCompletionRequest:
    """The chat request whose prompt `/tokenize` counts (no completion room asked for)."""
    return ChatCompletionRequest(
        model=model,
        messages=body.messages,
        documents=body.documents,
        plainformat=body.plainformat,
        history=body.history,
        continue_final_message=body.continue_final_message,
    )


def _serving_engine(state: ServerState, model: str | None) -> Engine:
    """The engine, once the request's model (optional on these routes) is the served one."""
    if model is not None:
        state.check_model(model)
    return state.serving_engine()


@router.post("/tokenize", tags=["tokenization"], response_model=TokenizeResponse, responses=API_ERRORS)
async def tokenize(body: TokenizeRequest, request: Request) -> dict[str, Any]:
    state = server_state(request)
    engine = _serving_engine(state, body.model)
    if body.messages is not None:
        tokens = services(request).chat.render(chat_request(body, state.served_name), engine).token_ids
    else:
        tokens = engine.tokenize(body.prompt or "", add_special_tokens=body.add_special_tokens)
    return {
        "count": len(tokens),
        "max_model_len": engine.info.max_model_len,
        "tokens": tokens,
        "token_strs": engine.token_strings(tokens) if body.return_token_strs else None,
    }


@router.post("/detokenize", tags=["tokenization"], response_model=DetokenizeResponse, responses=API_ERRORS)
async def detokenize(body: DetokenizeRequest, request: Request) -> dict[str, str]:
    engine = _serving_engine(server_state(request), body.model)
    vocab_size = engine.info.vocab_size
    outside = [token for token in body.tokens if token >= vocab_size]
    if outside:
        raise invalid_request(
            f"Token id {outside[0]} is outside the vocabulary (0..{vocab_size - 1}).", param="tokens"
        )
    return {"prompt": engine.detokenize(body.tokens)}
