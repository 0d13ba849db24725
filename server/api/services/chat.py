"""`/v1/chat/completions` and `/v1/chat/render`: messages → airoboros prompt → prepared generation.

`prepare` does everything that can fail because of the request (validation, rendering, the
context check), so a bad request is a 400 before any engine work or any byte of a stream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from prompt_formats import ContextLengthExceeded, FittedPrompt, PromptFormat, PromptFormatError

from server.api.protocol.requests import ChatCompletionRequest, RenderResponse
from server.api.tool_calls import ToolPlan, tool_plan
from server.api.services.sampling import engine_params, sampling_args
from server.api.services.validation import check_n, context_length_error
from server.engine import Engine, SchemaNotCompiled
from server.engine.sampling import compact_json_grammar
from server.errors import invalid_request
from server.generation import EnginePrompt, PreparedGeneration
from server.settings import Settings

DROPPED_MESSAGES_HEADER = "X-Airoboros-Dropped-Messages"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RenderedChat:
    fitted: FittedPrompt
    token_ids: list[int]
    tools: ToolPlan


def tools_grammar(plan: ToolPlan) -> str | None:
    """The grammar the answer is held to, or None for free text; a 400 naming the tool whose
    parameters the engine cannot compile, before the request is admitted."""
    if plan.schema is None:
        return None
    try:
        return compact_json_grammar(plan.schema)
    except SchemaNotCompiled as error:
        for tool in plan.allowed:
            try:
                compact_json_grammar(tool.parameters)
            except SchemaNotCompiled as tool_error:
                raise invalid_request(
                    f"The parameters of tool {tool.name!r} are a JSON schema the engine cannot compile: "
                    f"{tool_error.reason}.", param="tools", code="invalid_tool_schema",
                ) from None
        raise invalid_request(
            f"The tools' schemas cannot be compiled together: {error.reason}.", param="tools",
            code="invalid_tool_schema",
        ) from None


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
        info = engine.info
        asked = request.requested_max_tokens
        bos = [info.bos_token_id] if self.settings.add_bos and info.bos_token_id is not None else []
        # Leave room for the completion the client asked for, or at least one token.
        budget = info.max_model_len - (asked or 1) - len(bos)
        messages = [message.model_dump(exclude_none=True) for message in request.messages]
        documents = [doc.model_dump() for doc in request.documents] if request.documents is not None else None
        try:
            tools = tool_plan(request.tools, request.tool_choice, request.parallel_tool_calls)
            fitted = self.format.render_fitted(
                messages,
                tokenize=self._tokenizer(engine),
                max_prompt_tokens=budget,
                history=request.history,
                documents=documents,
                plainformat=request.plainformat,
                continue_final_message=request.continue_final_message,
                tools=tools.shown,
            )
        except ContextLengthExceeded as error:
            raise context_length_error(
                info.max_model_len, error.prompt_tokens + len(bos), asked,
                what="messages", param="messages", hint=", or set `history` to 'fit' or 'last'",
            ) from error
        except PromptFormatError as error:
            raise invalid_request(error.message, param=error.param, code=error.code) from error
        return RenderedChat(fitted, bos + list(fitted.token_ids), tools)

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
        grammar = tools_grammar(rendered.tools)
        room = engine.info.max_model_len - len(rendered.token_ids)
        response_format = request.response_format
        if grammar is not None and response_format is not None and response_format.type != "text":
            raise invalid_request(
                "response_format and tool calls both constrain the answer: send one of them "
                "(or tool_choice 'none').", param="response_format",
            )
        args = sampling_args(
            request,
            max_tokens=request.requested_max_tokens or min(self.settings.default_max_tokens, room),
            # The grammar ends a tool answer; a stop string inside its JSON would cut it.
            stops=self.format.stops(request.stop) if grammar is None else [],
            logprobs=(request.top_logprobs or 0) if request.logprobs else None,
            json_schema=response_format.schema_dict if response_format else None,
            json_object=bool(response_format and response_format.type == "json_object"),
            grammar=grammar,
        )
        params = engine_params(args, engine.info)
        continuation = request.continue_final_message
        return PreparedGeneration(
            prompts=[EnginePrompt(rendered.token_ids, rendered.fitted.prompt, params)],
            n=request.n,
            # A tool answer is JSON, read by the encoder's `ChoiceCalls`, not prose to shape.
            shaper=(lambda: self.format.output_shaper(continuation=continuation)) if grammar is None else None,
            stop_strings=tuple(self.format.stop_strings),
            dropped_messages=rendered.fitted.dropped_messages,
            headers={DROPPED_MESSAGES_HEADER: str(rendered.fitted.dropped_messages)},
            tool_choice=rendered.tools.choice.mode if grammar is not None else None,
        )
