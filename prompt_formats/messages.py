"""OpenAI chat messages → a validated `Conversation` (rules R4-R7 of spec/prompt-format.md).

This is the part of a prompt format that does not depend on the prompt's text layout: which
roles exist, where a system message may stand, how content parts become text, how runs of the
same role merge, and what a conversation must start and end with. A format renders the result.

Choices the spec leaves open, marked *(ours)* as there:

- A message's `name` field is ignored *(ours)*: the format has no place for speaker names, and
  refusing it would break clients that always send one.
- Content parts are joined raw with `\\n`, then the message is stripped as a whole *(ours)*: the
  literal reading of R7, so `["Hello", "world"]` → `Hello\\nworld`.
- A run of same-role messages (R6) is joined with `\\n` and the joined text is stripped again
  *(ours)*, so an empty message inside a run leaves no dangling newline at its ends.
- `content: null` (or missing) is an error for every role but an assistant message with
  `tool_calls` *(ours)*, as OpenAI. The legacy `function_call` is refused with
  `unsupported_tool_calls`, never rendered without it.
- Tool calls and results (`tools.py` has the text): an assistant message's `tool_calls` render as
  the JSON list the model writes, after its content and a newline when it has content. A `tool`
  message renders as `Function {name} returned: {content}` on the user's side of the chat, so the
  model answers it; it must answer a call of the nearest assistant message before it, with only
  other `tool` messages between (`unexpected_tool_message` otherwise). A run that opens with
  results is marked (`Turn.tool_results`), so history fitting never keeps a result without its
  call.
- An empty part list is `invalid_content` *(ours; OpenAI refuses it too)*; an empty string is
  allowed and renders as nothing.
- `continue_final_message` with a final *user* message is `nothing_to_continue` *(ours)*:
  silently ignoring the flag would hide a client mistake.
- The prefill (a final assistant run under `continue_final_message`) is stripped on the left
  only *(ours)*: the client decides where the continuation starts, and a trailing space or
  newline (`"```python\\n"`) is part of that decision. Generation continues straight after it.

When a list has several mistakes, the first message in list order that is wrong by itself
(shape, role, content, misplaced system) is reported before any ordering mistake, so the code
a client sees does not depend on what else is wrong later in the list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import json

from prompt_formats.errors import PromptFormatError
from prompt_formats.tools import render_calls, render_result

SYSTEM_ROLES = ("system", "developer")
USER = "user"
ASSISTANT = "assistant"
TOOL = "tool"
KNOWN_ROLES = (*SYSTEM_ROLES, USER, ASSISTANT, TOOL)


@dataclass(frozen=True)
class Turn:
    """One speaker's turn: a run of consecutive same-role messages, merged (R6)."""

    text: str
    message_count: int = 1
    # The run opens with tool results, which belong with the calls of the turn before it.
    tool_results: bool = False


@dataclass(frozen=True)
class Exchange:
    """An earlier user turn and the assistant's answer: the unit the history policy drops."""

    user: Turn
    assistant: Turn

    @property
    def message_count(self) -> int:
        return self.user.message_count + self.assistant.message_count


@dataclass(frozen=True)
class Conversation:
    """A validated chat, in the shape every prompt format renders.

    `system` is None when the client sent no system message (the format's default applies) and
    the joined, stripped text otherwise (possibly empty: R8). `prefill` is the partial assistant
    reply of `continue_final_message`, if any.
    """

    system: str | None
    exchanges: tuple[Exchange, ...]
    last_user: Turn
    prefill: Turn | None = None

    def without_oldest(self, count: int) -> Conversation:
        """The same chat with its `count` oldest exchanges dropped (system and last user kept)."""
        return replace(self, exchanges=self.exchanges[count:])

    def dropped_messages(self, count: int) -> int:
        """How many client messages dropping the `count` oldest exchanges removes."""
        return sum(exchange.message_count for exchange in self.exchanges[:count])

    def with_last_user_text(self, text: str) -> Conversation:
        return replace(self, last_user=replace(self.last_user, text=text))

    def keeps_results_with_calls(self, drop: int) -> bool:
        """Whether dropping the `drop` oldest exchanges leaves no tool result without its call."""
        if drop == 0:
            return True
        first = self.exchanges[drop].user if drop < len(self.exchanges) else self.last_user
        return not first.tool_results

    def with_system(self, system: str) -> Conversation:
        return replace(self, system=system)


def parse_messages(
    messages: Sequence[Mapping[str, Any]], *, continue_final_message: bool = False
) -> Conversation:
    """Validate OpenAI chat messages and merge them into a `Conversation`.

    Raises `PromptFormatError` with one of the codes documented in `errors.py`.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise PromptFormatError(
            "'messages' must be a list of message objects.", code="invalid_message"
        )
    if not messages:
        raise PromptFormatError(
            "'messages' is empty: send at least one user message.", code="empty_messages"
        )

    system_texts: list[str] = []
    runs: list[tuple[str, list[str]]] = []  # (role, raw texts) of consecutive same-role messages
    result_runs: set[int] = set()  # indexes of the runs that open with tool results
    open_calls: dict[str, str] = {}  # the last assistant message's unanswered calls: id → name
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        # `type(...) is dict` first: the ABC check costs five times more, once per message.
        if type(message) is not dict and not isinstance(message, Mapping):
            raise PromptFormatError(f"{where} must be an object.", code="invalid_message")
        role = message.get("role")
        if not isinstance(role, str):
            raise PromptFormatError(f"{where}.role must be a string.", code="invalid_message")

        if role in SYSTEM_ROLES:
            if runs:
                raise PromptFormatError(
                    f"{where} has role {role!r} after the conversation began: system and "
                    "developer messages are allowed only at the start of 'messages'.",
                    code="misplaced_system_message",
                )
            system_texts.append(_content_text(message, where).strip())
        elif role in (USER, ASSISTANT, TOOL):
            if role == ASSISTANT and message.get("function_call"):
                raise PromptFormatError(
                    f"{where} carries the legacy function_call: send tool_calls instead.",
                    code="unsupported_tool_calls",
                )
            if role == TOOL:
                text = _tool_result_text(message, where, open_calls)
                role = USER
                if not runs or runs[-1][0] != USER:
                    result_runs.add(len(runs))
            elif role == ASSISTANT and message.get("tool_calls"):
                text, open_calls = _calls_text(message, where)
            else:
                text = _content_text(message, where)
                open_calls = {}
            if runs and runs[-1][0] == role:
                runs[-1][1].append(text)
            else:
                runs.append((role, [text]))
        else:
            raise PromptFormatError(
                f"{where} has role {role!r}, which this model does not support; "
                f"supported roles: {', '.join(KNOWN_ROLES)}.",
                code="unsupported_role",
            )

    system = "\n".join(system_texts).strip() if system_texts else None
    if not runs:
        raise PromptFormatError(
            "'messages' holds only system messages: add a user message.",
            code="missing_user_message",
        )
    if runs[0][0] != USER:
        raise PromptFormatError(
            "After the system messages the conversation must start with a user message.",
            code="first_message_not_user",
        )

    prefill: Turn | None = None
    if runs[-1][0] == ASSISTANT:
        if not continue_final_message:
            raise PromptFormatError(
                "The last message must be a user message (or set continue_final_message "
                "to continue the final assistant message).",
                code="last_message_not_user",
            )
        _, texts = runs.pop()
        prefill = Turn(_join_prefill(texts), len(texts))
    elif continue_final_message:
        raise PromptFormatError(
            "continue_final_message is set, but the last message is not an assistant message.",
            code="nothing_to_continue",
        )

    turns = [Turn(_join_run(texts), len(texts), index in result_runs) for index, (_, texts) in enumerate(runs)]
    exchanges = tuple(Exchange(turns[i], turns[i + 1]) for i in range(0, len(turns) - 1, 2))
    return Conversation(system=system, exchanges=exchanges, last_user=turns[-1], prefill=prefill)


def _join_run(texts: list[str]) -> str:
    if len(texts) == 1:  # nearly every run: the same text as the general case, at a tenth the cost
        return texts[0].strip()
    return "\n".join(text.strip() for text in texts).strip()


def _join_prefill(texts: list[str]) -> str:
    stripped = [text.strip() for text in texts[:-1]] + [texts[-1].lstrip()]
    return "\n".join(stripped).lstrip()


def _content_text(message: Mapping[str, Any], where: str) -> str:
    """The text of a message's content: a string, or text parts joined with newlines (R7)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if content is None:
        raise PromptFormatError(f"{where}.content must not be null.", code="invalid_content")
    if isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
        if not content:
            raise PromptFormatError(
                f"{where}.content is an empty list of parts.", code="invalid_content"
            )
        texts: list[str] = []
        for part_index, part in enumerate(content):
            part_where = f"{where}.content[{part_index}]"
            if not isinstance(part, Mapping):
                raise PromptFormatError(f"{part_where} must be an object.", code="invalid_content")
            part_type = part.get("type")
            if part_type != "text":
                raise PromptFormatError(
                    f"{part_where} has type {part_type!r}: this model accepts text parts only.",
                    code="unsupported_content_type",
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise PromptFormatError(
                    f"{part_where}.text must be a string.", code="invalid_content"
                )
            texts.append(text)
        return "\n".join(texts)
    raise PromptFormatError(
        f"{where}.content must be a string or a list of text parts.", code="invalid_content"
    )


def _calls_text(message: Mapping[str, Any], where: str) -> tuple[str, dict[str, str]]:
    """An assistant message's content and its calls as the model writes them; the calls by id."""
    calls = message.get("tool_calls")
    content = message.get("content")
    text = "" if content is None else _content_text(message, where).strip()
    if isinstance(calls, (str, bytes)) or not isinstance(calls, Sequence):
        raise _invalid_calls(f"{where}.tool_calls must be a list of calls.")
    pairs: list[tuple[str, Any]] = []
    by_id: dict[str, str] = {}
    for position, call in enumerate(calls):
        call_where = f"{where}.tool_calls[{position}]"
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise _invalid_calls(f"{call_where} must be {{\"type\": \"function\", \"function\": {{\"name\", \"arguments\"}}}}.")
        if call.get("type", "function") != "function":
            raise _invalid_calls(f"{call_where} has type {call.get('type')!r}: only function calls exist.")
        arguments = function.get("arguments", "{}")
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) else None
        except json.JSONDecodeError:
            parsed = None
        if parsed is None:
            raise _invalid_calls(f"{call_where}.function.arguments must be a string of JSON.")
        pairs.append((function["name"], parsed))
        if isinstance(call.get("id"), str):
            by_id[call["id"]] = function["name"]
    calls_text = render_calls(pairs)
    return (f"{text}\n{calls_text}" if text else calls_text), by_id


def _tool_result_text(message: Mapping[str, Any], where: str, open_calls: dict[str, str]) -> str:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or call_id not in open_calls:
        raise PromptFormatError(
            f"{where} has role 'tool' with tool_call_id {call_id!r}, which answers no call of the "
            "assistant message before it: a tool message must follow the assistant message whose "
            "tool_calls hold that id.",
            code="unexpected_tool_message",
        )
    return render_result(open_calls.pop(call_id), _content_text(message, where).strip())


def _invalid_calls(message: str) -> PromptFormatError:
    return PromptFormatError(message, code="invalid_tool_calls")
