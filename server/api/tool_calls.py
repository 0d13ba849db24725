"""Tool calls between the request and the wire: what a request allows, and one choice's calls.

`ToolPlan` is a request's tools and `tool_choice` read once (`prompt_formats.tools`): which tools
the prompt shows and which schema holds the answer. `ChoiceCalls` reads one choice's answer as it
streams (`prompt_formats.tool_output`) and names its calls (`call_…` ids); the chat and Responses
encoders turn its events into their own chunks and events.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prompt_formats import (
    CallStarted,
    Tool,
    ToolChoice,
    ToolOutputReader,
    parse_tool_choice,
    parse_tools,
    tools_schema,
)
from prompt_formats.tool_output import Event


@dataclass(frozen=True)
class ToolPlan:
    tools: tuple[Tool, ...]
    choice: ToolChoice
    parallel: bool
    # What the answer is held to; None when the model answers in free text (no tools, `none`).
    schema: dict[str, Any] | None

    @property
    def shown(self) -> tuple[Tool, ...]:
        """The tools the prompt lists (none under `tool_choice: none`)."""
        return () if self.choice.mode == "none" else self.tools

    @property
    def allowed(self) -> tuple[Tool, ...]:
        """The tools a call may name."""
        if self.choice.mode == "named":
            return tuple(tool for tool in self.tools if tool.name == self.choice.name)
        return self.shown


def tool_plan(
    tools: Sequence[Mapping[str, Any]] | None,
    tool_choice: str | Mapping[str, Any] | None,
    parallel: bool,
    *,
    flat: bool = False,
) -> ToolPlan:
    """Raises `PromptFormatError` (param `tools` or `tool_choice`) for a client mistake."""
    parsed = parse_tools(tools, flat=flat)
    choice = parse_tool_choice(tool_choice, parsed)
    return ToolPlan(parsed, choice, parallel, tools_schema(parsed, choice, parallel=parallel))


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


class ChoiceCalls:
    """One choice's tool answer, read as it arrives; each call gets its id when its name does."""

    def __init__(self) -> None:
        self.reader = ToolOutputReader()
        self.ids: list[str] = []

    def feed(self, text: str) -> list[Event]:
        events = self.reader.feed(text) if text else []
        for event in events:
            if isinstance(event, CallStarted):
                self.ids.append(new_call_id())
        return events

    @property
    def answer(self) -> str | None:
        return self.reader.answer

    def finish_reason(self, engine_reason: str | None) -> str | None:
        """`tool_calls` when the choice ended with calls, the engine's reason otherwise."""
        return "tool_calls" if engine_reason == "stop" and self.reader.calls else engine_reason

    def calls(self) -> list[tuple[str, str, str]]:
        """`(id, name, arguments)` of every call that got its name."""
        return [(call_id, call.name, call.arguments) for call_id, call in zip(self.ids, self._named())]

    def complete(self, index: int) -> bool:
        """Whether call `index` has all its arguments (the token limit may cut the last one)."""
        return self._named()[index].complete

    def _named(self) -> list:
        return [call for call in self.reader.calls if call.name is not None]

    def chat_tool_calls(self) -> list[dict[str, Any]]:
        return [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            for call_id, name, arguments in self.calls()
        ]
