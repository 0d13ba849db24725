"""Request models of the OpenAI API this server speaks, with OpenAI's ranges.

Unknown fields are ignored, as OpenAI and vLLM do. Checks that need the loaded model (the model
name, `n` against the server's maximum, `logit_bias` ids against the vocabulary) live in the
services, which know the model; everything a schema can say is said here, so `/openapi.json`
describes what the server really accepts.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_CLIENT_STOPS = 4


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Request):
    include_usage: bool = False
    # vLLM's extension: `usage` so far on every chunk (here it needs no `include_usage`).
    continuous_usage_stats: bool = False


class JsonSchemaFormat(_Request):
    name: str = Field("response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> "ResponseFormat":
        if self.type == "json_schema" and (self.json_schema is None or self.json_schema.schema_ is None):
            raise ValueError("response_format.json_schema.schema is required for type 'json_schema'")
        return self

    @property
    def schema_dict(self) -> dict[str, Any] | None:
        """The JSON schema to constrain decoding to (json_schema only)."""
        return self.json_schema.schema_ if self.type == "json_schema" and self.json_schema else None


class Document(_Request):
    """A closed-context input block (prompt-format.md, `documents`)."""

    text: str
    metadata: dict[str, str] = Field(default_factory=dict)


class ContentPart(BaseModel):
    # Parts other than text are refused by the prompt format with a clear message, so the
    # model accepts any part type here rather than failing with a schema error.
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: Union[str, list[ContentPart], None] = None
    name: str | None = None


class SamplingFields(_Request):
    """Fields chat and completions share, mapped onto vLLM's sampling parameters."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Union[str, list[str], None] = None
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # OpenAI's cache-routing hint: unused by the engine, repeated by the render routes for a
    # router that groups requests by it (api/routes/render.py).
    prompt_cache_key: str | None = Field(None, max_length=1024)
    # Extensions (vLLM's names).
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=2)
    min_tokens: int | None = Field(None, ge=0)
    ignore_eos: bool = False

    @field_validator("stop")
    @classmethod
    def _bounded_stops(cls, value: Union[str, list[str], None]) -> Union[str, list[str], None]:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > MAX_CLIENT_STOPS:
            raise ValueError(f"at most {MAX_CLIENT_STOPS} stop sequences are allowed")
        if any(stop == "" for stop in stops):
            raise ValueError("stop sequences must not be empty")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for token, bias in (value or {}).items():
            if not token.lstrip("-").isdigit():
                raise ValueError(f"logit_bias keys must be token ids, got {token!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"logit_bias values must be between -100 and 100, got {bias}")
        return value

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> "SamplingFields":
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = Field(
        None, description="Function tools; the answer is held to their parameters' JSON schemas."
    )
    tool_choice: Union[str, dict[str, Any], None] = Field(
        None, description="none, auto (default with tools), required, or {type: function, function: {name}}."
    )
    parallel_tool_calls: bool = True
    # Prompt extensions (prompt-format.md).
    documents: list[Document] | None = None
    plainformat: bool = False
    history: Literal["error", "fit", "last"] = "error"
    continue_final_message: bool = False

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> "ChatCompletionRequest":
        if self.top_logprobs is not None and self.top_logprobs > 0 and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        return self

    @property
    def requested_max_tokens(self) -> int | None:
        # OpenAI deprecated max_tokens for max_completion_tokens; the newer one wins.
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingFields):
    prompt: Union[str, list[str]]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)
    response_format: ResponseFormat | None = None
    # vLLM's extension: logprob tokens as "token_id:<id>", exact where text is lossy.
    return_tokens_as_token_ids: bool = False

    @field_validator("prompt")
    @classmethod
    def _non_empty_prompt(cls, value: Union[str, list[str]]) -> Union[str, list[str]]:
        if isinstance(value, list) and not value:
            raise ValueError("prompt must not be an empty list")
        return value

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


class RenderResponse(BaseModel):
    prompt: str
    token_ids: list[int]
    num_tokens: int
    max_model_len: int
    dropped_messages: int


class TokenizeRequest(_Request):
    """vLLM's `/tokenize`: a `prompt` (as completions sends it) or chat `messages` (as chat
    renders them, extensions and history policy included)."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    add_special_tokens: bool = False  # prompt form only: the tokenizer's BOS/EOS additions
    return_token_strs: bool = False
    # Accepted for vLLM's clients: the airoboros prompt always ends with the assistant's turn.
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    documents: list[Document] | None = None
    plainformat: bool = False
    history: Literal["error", "fit", "last"] = "error"

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> "TokenizeRequest":
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` and `messages`")
        return self


class DetokenizeRequest(_Request):
    model: str | None = None
    tokens: list[int] = Field(..., description="Token ids (each ≥ 0 and in the vocabulary).")

    @field_validator("tokens")
    @classmethod
    def _non_negative(cls, value: list[int]) -> list[int]:
        if any(token < 0 for token in value):
            raise ValueError("token ids must not be negative")
        return value
