"""`/v1/chat/completions` and `/v1/chat/render`: messages → airoboros prompt → prepared generation.

`prepare` does everything that can fail because of the request (validation, rendering, the
context check), so a bad request is a 400 before any engine work or any byte of a stream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from prompt_formats import ContextLengthExceeded, FittedPrompt, PromptFormat, PromptFormatError

from server.api.protocol import ChatCompletionRequest, RenderResponse
from server.api.validation import check_n, context_length_error
from server.engine import Engine
from server.engine.sampling import build_sampling_params
from server.errors import invalid_request
from server.generation import EnginePrompt, PreparedGeneration
from server.settings import Settings

DROPPED_MESSAGES_HEADER = "X-Airoboros-Dropped-Messages"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RenderedChat:
    fitted: FittedPrompt
    token_ids: list[int]


class ChatService:
    def __init__(self, settings: Settings, prompt_format: PromptFormat) -> None:
        self.settings = settings
        self.format = prompt_format
        # Token ids cached per message piece for the engine's tokenizer (`use_engine`).
        self._engine: Engine | None = None
        self._tokenize: Callable[[str], list[int]] | None = None

    def use_engine(self, engine: Engine) -> None:
        """Build the token cache for `engine`'s tokenizer; its join check runs once, here (at
        start-up, in a thread), not on a request."""
        cache = self.format.token_cache(engine.tokenize)
        if not cache.joins_safely:
            logger.warning(
                "the %s tokenizer does not split at prompt piece boundaries: chat prompts are "
                "tokenized whole on every request (exact, slower)", self.format.name,
            )
        self._engine, self._tokenize = engine, cache

    def _tokenizer(self, engine: Engine) -> Callable[[str], list[int]]:
        return self._tokenize if self._engine is engine and self._tokenize is not None else engine.tokenize

    def render(self, request: ChatCompletionRequest, engine: Engine) -> RenderedChat:
        """The prompt and its token ids within the context, after the history policy."""
        if request.tools and request.tool_choice != "none":
            raise invalid_request(
                "This model does not support tool calls; remove `tools` or set tool_choice to 'none'.",
                param="tools", code="tools_not_supported",
            )
        info = engine.info
        asked = request.requested_max_tokens
        bos = [info.bos_token_id] if self.settings.add_bos and info.bos_token_id is not None else []
        # Leave room for the completion the client asked for, or at least one token.
        budget = info.max_model_len - (asked or 1) - len(bos)
        messages = [message.model_dump(exclude_none=True) for message in request.messages]
        documents = [doc.model_dump() for doc in request.documents] if request.documents is not None else None
        try:
            fitted = self.format.render_fitted(
                messages,
                tokenize=self._tokenizer(engine),
                max_prompt_tokens=budget,
                history=request.history,
                documents=documents,
                plainformat=request.plainformat,
                continue_final_message=request.continue_final_message,
            )
        except ContextLengthExceeded as error:
            raise context_length_error(
                info.max_model_len, error.prompt_tokens + len(bos), asked,
                what="messages", param="messages", hint=", or set `history` to 'fit' or 'last'",
            ) from error
        except PromptFormatError as error:
            raise invalid_request(error.message, param=error.param, code=error.code) from error
        return RenderedChat(fitted, bos + list(fitted.token_ids))

    def render_response(self, request: ChatCompletionRequest, engine: Engine) -> RenderResponse:
        rendered = self.render(request, engine)
        return RenderResponse(
            prompt=rendered.fitted.prompt,
            token_ids=rendered.token_ids,
            num_tokens=len(rendered.token_ids),
            max_model_len=engine.info.max_model_len,
            dropped_messages=rendered.fitted.dropped_messages,
        )

    def prepare(self, request: ChatCompletionRequest, engine: Engine) -> PreparedGeneration:
        check_n(request.n, self.settings)
        rendered = self.render(request, engine)
        room = engine.info.max_model_len - len(rendered.token_ids)
        response_format = request.response_format
        params = build_sampling_params(
            request,
            info=engine.info,
            max_tokens=request.requested_max_tokens or min(self.settings.default_max_tokens, room),
            stops=self.format.stops(request.stop),
            stream=request.stream,
            logprobs=(request.top_logprobs or 0) if request.logprobs else None,
            json_schema=response_format.schema_dict if response_format else None,
            json_object=bool(response_format and response_format.type == "json_object"),
        )
        continuation = request.continue_final_message
        return PreparedGeneration(
            prompts=[EnginePrompt(rendered.token_ids, rendered.fitted.prompt, params)],
            n=request.n,
            shaper=lambda: self.format.output_shaper(continuation=continuation),
            stop_strings=tuple(self.format.stop_strings),
            dropped_messages=rendered.fitted.dropped_messages,
            headers={DROPPED_MESSAGES_HEADER: str(rendered.fitted.dropped_messages)},
        )
