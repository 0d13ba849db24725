"""Request model of `POST /v1/responses`, OpenAI's Responses API as this server speaks it.

Beside the chat and completions models (`requests.py`) because the Responses API shapes its request differently from chat
(`input` items, `instructions`, `text.format`, `max_output_tokens`); `ResponsesService` turns it
into a chat request, so everything after that is the chat route's own path.

`store`, `previous_response_id` and `background` use the responses store (`server.store`);
`conversation` and built-in tools are accepted by the schema and refused by the service with a
400 naming the field or tool type, so a client learns exactly what this server does not do.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from server.api.protocol.requests import ContentPart, Document, JsonSchemaFormat, ResponseFormat


class ResponseInputItem(BaseModel):
    """One `input` item: a `message` (the default type), a `function_call` (`call_id`, `name`,
    `arguments`) or a `function_call_output` (`call_id`, `output`); others (item references,
    reasoning) are refused by the service."""

    model_config = ConfigDict(extra="allow")
    type: str = "message"
    role: str | None = Field(None, description="user, assistant, system or developer")
    content: Union[str, list[ContentPart], None] = Field(
        None, description="A string, or `input_text` / `output_text` parts."
    )


class ResponseTextFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"]
    name: str = Field("response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> "ResponseTextFormat":
        if self.type == "json_schema" and self.schema_ is None:
            raise ValueError("text.format.schema is required for type 'json_schema'")
        return self

    def as_response_format(self) -> ResponseFormat:
        """The chat route's `response_format` for the same constrained decoding."""
        if self.type != "json_schema":
            return ResponseFormat(type=self.type)
        schema = JsonSchemaFormat(name=self.name, description=self.description, schema=self.schema_, strict=self.strict)
        return ResponseFormat(type="json_schema", json_schema=schema)

    def echo(self) -> dict[str, Any]:
        """As the response object repeats it."""
        if self.type != "json_schema":
            return {"type": self.type}
        echoed = {"type": "json_schema", "name": self.name, "schema": self.schema_, "strict": self.strict}
        if self.description is not None:
            echoed["description"] = self.description
        return echoed


class ResponseText(BaseModel):
    model_config = ConfigDict(extra="ignore")
    format: ResponseTextFormat | None = None


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    input: Union[str, list[ResponseInputItem]] = Field(
        ..., description="The user's text, or a list of message items."
    )
    instructions: str | None = Field(None, description="The system text (airoboros: the system prompt).")
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool = False
    text: ResponseText | None = None
    # Accepted and repeated in the response.
    metadata: dict[str, str] | None = None
    user: str | None = None
    # OpenAI's cache-routing hint, as on chat: repeated by the render route.
    prompt_cache_key: str | None = Field(None, max_length=1024)
    tool_choice: Union[str, dict[str, Any], None] = None
    parallel_tool_calls: bool | None = None
    truncation: Literal["auto", "disabled"] | None = Field(
        None, description="`auto` drops the oldest turns to fit the context (`history: fit`)."
    )
    tools: list[dict[str, Any]] | None = Field(
        None, description="Function tools (`{type: function, name, parameters}`); built-in tools are refused."
    )
    store: bool | None = Field(
        None, description="Keep the response (default true, as OpenAI; a 400 when the store is off)."
    )
    previous_response_id: str | None = Field(
        None, max_length=128, description="A stored response this one continues: its chain is the history."
    )
    background: bool | None = Field(None, description="Answer at once and run in the server; poll with GET.")
    # Refused (400): no Conversations API.
    conversation: Union[str, dict[str, Any], None] = None
    # Sampling extensions, as on chat (vLLM's names).
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=2)
    min_tokens: int | None = Field(None, ge=0)
    ignore_eos: bool = False
    # Prompt extensions, as on chat (prompt-format.md).
    documents: list[Document] | None = None
    plainformat: bool = False
    history: Literal["error", "fit", "last"] | None = Field(
        None, description="As on chat; default `error`, or `fit` with `truncation: auto`."
    )

    @model_validator(mode="after")
    def _non_empty_input(self) -> "ResponsesRequest":
        if isinstance(self.input, list) and not self.input:
            raise ValueError("input must not be an empty list")
        return self
