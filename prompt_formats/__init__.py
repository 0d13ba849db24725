"""Chat messages → prompt text for the models this server runs, and the output clean-up.

Pure Python: no HTTP, no engine, no pydantic. The server imports this package, never the other
way round. Start at `get_format()`; the rules it implements are in spec/prompt-format.md, and
each module's docstring lists the choices it made where the spec is silent (marked *(ours)*).

Modules: `errors` (exceptions and every error code), `messages` (validation, R4-R7),
`documents` (the closed-context extension), `conversation_format` (what every format shares),
`airoboros` (the airoboros-mpt-30b prompt), `chatml` (the embedded stand-in's), `layout` (a prompt
as pieces), `history` (fitting into the context, R11), `token_cache` (a prompt's token ids from
cached pieces), `output` (stripping the reply, R10), `stops` (stop strings, R10), `tools` (function tools: their
rendering and the answer's schema), `tool_output` (reading calls back), `protocol`
(what a format provides), `registry` (formats by name).
"""

from prompt_formats.airoboros import DEFAULT_SYSTEM, AiroborosFormat
from prompt_formats.chatml import ChatMLFormat
from prompt_formats.documents import DELIMITERS, Document, parse_documents, render_closed_context
from prompt_formats.errors import ContextLengthExceeded, PromptFormatError
from prompt_formats.history import HISTORY_POLICIES, FittedPrompt, HistoryPolicy
from prompt_formats.layout import PromptLayout
from prompt_formats.messages import Conversation, Exchange, Turn, parse_messages
from prompt_formats.output import OutputShaper, shape_output
from prompt_formats.protocol import PromptFormat
from prompt_formats.registry import (
    DEFAULT_FORMAT,
    format_names,
    get_format,
    register_format,
    unregister_format,
)
from prompt_formats.stops import merge_stops
from prompt_formats.token_cache import TokenCache
from prompt_formats.tool_output import AnswerDelta, ArgumentsDelta, CallStarted, ToolOutputReader
from prompt_formats.tools import Tool, ToolChoice, parse_tool_choice, parse_tools, tools_schema

__all__ = [
    "AnswerDelta",
    "ArgumentsDelta",
    "CallStarted",
    "Tool",
    "ToolChoice",
    "ToolOutputReader",
    "parse_tool_choice",
    "parse_tools",
    "tools_schema",
    "DEFAULT_FORMAT",
    "DEFAULT_SYSTEM",
    "DELIMITERS",
    "HISTORY_POLICIES",
    "AiroborosFormat",
    "ChatMLFormat",
    "ContextLengthExceeded",
    "Conversation",
    "Document",
    "Exchange",
    "FittedPrompt",
    "HistoryPolicy",
    "OutputShaper",
    "PromptFormat",
    "PromptFormatError",
    "PromptLayout",
    "TokenCache",
    "Turn",
    "format_names",
    "get_format",
    "merge_stops",
    "parse_documents",
    "parse_messages",
    "register_format",
    "render_closed_context",
    "shape_output",
    "unregister_format",
]
