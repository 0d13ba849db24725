"""Function tools: how they are shown to the model, the JSON it must answer with, and reading it back.

airoboros-mpt-30b was trained on no tool-call format, so the server asks for calls in words the
later airoboros datasets used for function selection, and holds the answer to a JSON schema built
from the tools (the engine's constrained decoding), so every call is valid by construction.

**The rendering** (`render_tools`), appended to the system text after a blank line, one block per
tool in the client's order:

    As an AI assistant, please select the most suitable function and parameters from the list of
    available functions below, based on the user's input. Provide your response in JSON format:
    a list of calls [{"name": "<function>", "arguments": {<parameters>}}], or {"answer": "<text>"}
    to answer without a function.

    Available functions:
    get_weather:
      description: Current weather of a city.
      parameters:
        city: The city. (string, required)
        unit: (one of "c", "f")

(The instruction is one line; it is wrapped here.) A parameter line is `name: description`, then
in parentheses its type, `required`, and its allowed values when it has an `enum`; an object's
properties follow, indented by two more spaces (an array of objects: its items' properties). A tool
without description or parameters leaves those lines out.

**The answer** (`calls_schema`, `answer_or_calls_schema`): a JSON list of calls, each
`{"name": ..., "arguments": ...}` whose arguments are valid against that tool's `parameters`, at
most `MAX_PARALLEL_CALLS`, and one when parallel calls are off or `tool_choice` names the function;
or, where the model may answer in text (`auto`), `{"answer": "..."}`. The engine writes it compactly (`", "` and `": "`), the way `render_calls`
writes an earlier assistant turn's calls, so history reads like the model's own answers.

**Results**: a `tool` message renders as `Function get_weather returned: {content}` in a user turn
(a tool message always follows the assistant turn that called it; see `messages.py`).

Choices, marked *(ours)*:

- The tools go into the system text, not the last user message *(ours)*: history fitting never
  drops the system part, so the functions stay visible on every turn, and the prompt's start
  stays the same from turn to turn (the engine's prefix cache keeps hitting).
- `tool_choice: "none"` renders no tools *(ours)*: a prompt that asks for JSON makes the model
  write JSON as its text. Earlier calls and results in the history are rendered all the same.
- The instruction is the same for `auto`, `required` and a named function *(ours)*, for the same
  prompt-cache reason; the schema, not the words, enforces what `tool_choice` allows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from prompt_formats.errors import PromptFormatError

TOOLS_INSTRUCTION = (
    "As an AI assistant, please select the most suitable function and parameters from the list of "
    "available functions below, based on the user's input. Provide your response in JSON format: "
    'a list of calls [{"name": "<function>", "arguments": {<parameters>}}], or {"answer": "<text>"} '
    "to answer without a function."
)
RESULT_PREFIX = "Function {name} returned: "
# The most calls one answer may hold: a small model left free can repeat a call until the token
# limit cuts the list, so the schema closes it here (parallel calls past this are rare in practice).
MAX_PARALLEL_CALLS = 8
# OpenAI's rule for function names.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}

ToolMode = Literal["none", "auto", "required", "named"]


@dataclass(frozen=True)
class Tool:
    """One validated function tool."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] = field(default_factory=lambda: dict(EMPTY_PARAMETERS))


@dataclass(frozen=True)
class ToolChoice:
    """What `tool_choice` allows: `mode`, and for `named` the one function."""

    mode: ToolMode
    name: str | None = None


def _invalid(message: str, *, param: str = "tools", code: str = "invalid_tools") -> PromptFormatError:
    return PromptFormatError(message, param=param, code=code)


def parse_tools(tools: Sequence[Mapping[str, Any]] | None, *, flat: bool = False) -> tuple[Tool, ...]:
    """Validate OpenAI function tools; `flat` for the Responses API's shape (no `function` key).

    Raises `PromptFormatError`: `unsupported_tool_type` naming a tool type other than
    `function`, `invalid_tools` for a malformed tool or a repeated name.
    """
    if not tools:
        return ()
    parsed: list[Tool] = []
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if not isinstance(tool, Mapping):
            raise _invalid(f"{where} must be an object.")
        kind = tool.get("type")
        if kind != "function":
            raise _invalid(
                f"{where} has type {kind!r}: this server supports only function tools.",
                code="unsupported_tool_type",
            )
        function = tool if flat else tool.get("function")
        if not isinstance(function, Mapping):
            raise _invalid(f"{where}.function must be an object.")
        name = function.get("name")
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise _invalid(f"{where} needs a name of 1-64 letters, digits, '_' or '-'; got {name!r}.")
        if any(known.name == name for known in parsed):
            raise _invalid(f"{where}: two tools are named {name!r}.")
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise _invalid(f"{where}.description must be a string.")
        parameters = function.get("parameters")
        if parameters is None:
            parameters = dict(EMPTY_PARAMETERS)
        if not isinstance(parameters, Mapping):
            raise _invalid(f"{where}.parameters must be a JSON Schema object.")
        parsed.append(Tool(name, description.strip() if description else None, dict(parameters)))
    return tuple(parsed)


def parse_tool_choice(choice: Any, tools: Sequence[Tool]) -> ToolChoice:
    """`tool_choice` against the tools; default `auto` with tools, `none` without (OpenAI's).

    Accepts chat's `{"type": "function", "function": {"name"}}` and the Responses API's
    `{"type": "function", "name"}`. Raises `PromptFormatError` (param `tool_choice`).
    """
    if choice is None:
        return ToolChoice("auto" if tools else "none")
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise _invalid(
                f"tool_choice must be 'none', 'auto', 'required' or a function; got {choice!r}.",
                param="tool_choice", code="invalid_tool_choice",
            )
        if choice == "required" and not tools:
            raise _invalid(
                "tool_choice is 'required' but no tools were given.", param="tool_choice", code="invalid_tool_choice"
            )
        return ToolChoice("none" if choice == "none" or not tools else choice)
    if isinstance(choice, Mapping) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else choice.get("name")
        if not any(tool.name == name for tool in tools):
            known = ", ".join(tool.name for tool in tools) or "none"
            raise _invalid(
                f"tool_choice names the function {name!r}, which is not among the tools ({known}).",
                param="tool_choice", code="unknown_tool",
            )
        return ToolChoice("named", name)
    raise _invalid(
        "tool_choice must be 'none', 'auto', 'required' or {\"type\": \"function\", ...}.",
        param="tool_choice", code="invalid_tool_choice",
    )


# --- the rendering ---------------------------------------------------------------------------


def render_tools(tools: Sequence[Tool]) -> str:
    """The instruction and the functions, for the end of the system text."""
    lines = [TOOLS_INSTRUCTION, "", "Available functions:"]
    for tool in tools:
        lines.append(f"{tool.name}:")
        if tool.description:
            lines.append(f"  description: {tool.description}")
        parameter_lines = _property_lines(tool.parameters, "    ")
        if parameter_lines:
            lines += ["  parameters:", *parameter_lines]
    return "\n".join(lines)


def _property_lines(schema: Mapping[str, Any], indent: str) -> list[str]:
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return []
    required = schema.get("required") if isinstance(schema.get("required"), list) else []
    lines: list[str] = []
    for name, spec in properties.items():
        spec = spec if isinstance(spec, Mapping) else {}
        details = []
        if isinstance(spec.get("type"), str):
            details.append(spec["type"])
        if name in required:
            details.append("required")
        if isinstance(spec.get("enum"), list):
            details.append("one of " + ", ".join(json.dumps(value, ensure_ascii=False) for value in spec["enum"]))
        description = " ".join(str(spec.get("description") or "").split())
        text = " ".join(part for part in (description, f"({', '.join(details)})" if details else "") if part)
        lines.append(f"{indent}{name}:{' ' + text if text else ''}")
        nested = spec.get("items") if isinstance(spec.get("items"), Mapping) else spec
        lines += _property_lines(nested, indent + "  ")
    return lines


def render_calls(calls: Sequence[tuple[str, Any]]) -> str:
    """`(name, arguments)` pairs as the model writes calls: a compact JSON list."""
    return json.dumps([{"name": name, "arguments": arguments} for name, arguments in calls], ensure_ascii=False)


def render_result(name: str, content: str) -> str:
    return RESULT_PREFIX.format(name=name) + content


# --- the schemas the engine holds the answer to ----------------------------------------------


def call_schema(tool: Tool) -> dict[str, Any]:
    """One call of `tool`: its name, then arguments valid against its parameters."""
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": tool.parameters},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def calls_schema(tools: Sequence[Tool], *, parallel: bool) -> dict[str, Any]:
    """A list of one or more calls of `tools` (exactly one when not `parallel`).

    A tool's `$ref`s point into its own parameters (`#/$defs/Item`, as pydantic writes them);
    nested here, they would point into this schema. So a tool with refs is also kept whole under
    this schema's `$defs`, by name, and its refs are rewritten to point there.
    """
    rooted = [_rooted(tool) for tool in tools]
    calls = [call_schema(tool) for tool in rooted]
    schema: dict[str, Any] = {
        "type": "array",
        "items": calls[0] if len(calls) == 1 else {"anyOf": calls},
        "minItems": 1,
    }
    schema["maxItems"] = MAX_PARALLEL_CALLS if parallel else 1
    definitions = {tool.name: tool.parameters for tool, original in zip(rooted, tools) if tool is not original}
    if definitions:
        schema["$defs"] = definitions
    return schema


def _rooted(tool: Tool) -> Tool:
    if '"$ref"' not in json.dumps(tool.parameters):
        return tool
    return Tool(tool.name, tool.description, _rewrite_refs(tool.parameters, f"#/$defs/{tool.name}"))


def _rewrite_refs(node: Any, prefix: str) -> Any:
    if isinstance(node, Mapping):
        return {
            key: (prefix + value[1:] if key == "$ref" and isinstance(value, str) and value.startswith("#")
                  else _rewrite_refs(value, prefix))
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_rewrite_refs(item, prefix) for item in node]
    return node


def answer_or_calls_schema(tools: Sequence[Tool], *, parallel: bool) -> dict[str, Any]:
    """`auto`: a text answer `{"answer": "..."}`, or calls as `calls_schema`."""
    answer = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    calls = calls_schema(tools, parallel=parallel)
    definitions = calls.pop("$defs", None)
    schema: dict[str, Any] = {"anyOf": [calls, answer]}
    if definitions:
        schema["$defs"] = definitions
    return schema


def tools_schema(tools: Sequence[Tool], choice: ToolChoice, *, parallel: bool) -> dict[str, Any] | None:
    """What the answer must be under `choice`; None for free text (`none`)."""
    if choice.mode == "none":
        return None
    if choice.mode == "named":  # one call of that function, as OpenAI forces it
        return calls_schema([tool for tool in tools if tool.name == choice.name], parallel=False)
    if choice.mode == "required":
        return calls_schema(tools, parallel=parallel)
    return answer_or_calls_schema(tools, parallel=parallel)
