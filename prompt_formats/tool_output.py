"""Reading the model's tool answer back (`tools.py` says its shape), whole or as it streams.

The engine holds the output to the answer schema, so the text is, at every moment, a prefix of
either a JSON list of `{"name": ..., "arguments": ...}` calls or `{"answer": "..."}`. The reader
walks it character by character, once, and reports:

- `CallStarted(index, name)` when a call's name is complete (OpenAI's first chunk of a call);
- `ArgumentsDelta(index, text)`: the raw text of that call's `arguments` value as it arrives, so
  the fragments join to exactly the text the model wrote, the same string a non-streamed reply
  gives for the same output;
- `AnswerDelta(text)`: the decoded text of `"answer"` (escapes resolved; an escape or surrogate
  pair split between deltas is held until it is whole).

Feeding the whole text at once gives the same events as feeding it in any split; `calls` and
`answer` hold the result. A call cut by the token limit keeps the arguments it had *(ours; so does
OpenAI)*: the finish reason `length` says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CallStarted:
    index: int
    name: str


@dataclass(frozen=True)
class ArgumentsDelta:
    index: int
    text: str


@dataclass(frozen=True)
class AnswerDelta:
    text: str


Event = CallStarted | ArgumentsDelta | AnswerDelta


@dataclass
class ParsedCall:
    name: str | None = None
    arguments: str = ""
    complete: bool = False  # its arguments value closed (not cut by the token limit)
    # Arguments that arrived before the name (never with this server's schemas, whose `name`
    # comes first; kept so the reader never depends on that order).
    held: str = ""


@dataclass
class ToolOutputReader:
    """Feed the output's text deltas; send back the events."""

    calls: list[ParsedCall] = field(default_factory=list)
    _depth: int = 0
    _top: str = ""  # "[" calls, "{" an answer object
    _in_string: bool = False
    _escape: bool = False
    _string: list[str] = field(default_factory=list)  # the string being read (raw)
    _last_string: str | None = None  # a complete string, until we know whether it is a key
    _key: str | None = None  # the key whose value comes next, at the current depth
    _arguments_next: bool = False  # the next non-space character starts a call's arguments
    _arguments_depth: int | None = None  # depth at which the open arguments value started
    _answer_open: bool = False
    _answer_sent: str = ""

    @property
    def answer(self) -> str | None:
        """The decoded answer text, if the model answered instead of calling."""
        if self._top != "{":
            return None
        return self._answer_sent

    def feed(self, delta: str) -> list[Event]:
        events: list[Event] = []
        arguments: list[str] = []
        for char in delta:
            self._step(char, arguments, events)
        self._flush_arguments(arguments, events)
        if self._answer_open:
            self._send_answer("".join(self._string), events, final=False)
        return events

    def _step(self, char: str, arguments: list[str], events: list[Event]) -> None:
        if self._arguments_depth is not None:
            arguments.append(char)
        elif self._arguments_next and not char.isspace():
            self._arguments_next = False
            self._arguments_depth = self._depth
            arguments.append(char)
        if self._in_string:
            if self._escape:
                self._escape = False
            elif char == "\\":
                self._escape = True
            elif char == '"':
                self._in_string = False
                self._string_done(events)
                return
            self._string.append(char)
            return
        if char == '"':
            self._in_string = True
            self._string = []
            if self._top == "{" and self._depth == 1 and self._key == "answer":
                self._answer_open = True
            return
        if char.isspace():
            return
        if char == ":":
            self._key, self._last_string = self._last_string, None
            self._arguments_next = self._key == "arguments" and self._depth == 2 and self._top == "["
            return
        if char in "[{":
            if not self._top:
                self._top = char
            self._depth += 1
            if self._top == "[" and self._depth == 2:
                self.calls.append(ParsedCall())
            return
        if char in "]}" or char == ",":
            if self._arguments_depth is not None and self._depth == self._arguments_depth:
                # A scalar value ends before the `,` or `}` that follows it.
                arguments.pop()
                self._end_arguments(arguments, events)
            if char != ",":
                self._depth -= 1
                if self._arguments_depth is not None and self._depth == self._arguments_depth:
                    self._end_arguments(arguments, events)
            self._key = None
            return

    def _string_done(self, events: list[Event]) -> None:
        raw = "".join(self._string)
        if self._answer_open:
            self._answer_open = False
            self._send_answer(raw, events, final=True)
            return
        if self._top == "[" and self._depth == 2 and self._key == "name" and self.calls:
            call = self.calls[-1]
            call.name = json.loads(f'"{raw}"')
            index = len(self.calls) - 1
            events.append(CallStarted(index, call.name))
            if call.held:
                call.arguments, call.held = call.held, ""
                events.append(ArgumentsDelta(index, call.arguments))
            self._key = None
            return
        self._last_string = json.loads(f'"{raw}"') if self._key is None else None

    def _end_arguments(self, arguments: list[str], events: list[Event]) -> None:
        self._flush_arguments(arguments, events)
        self._arguments_depth = None
        self.calls[-1].complete = True

    def _flush_arguments(self, arguments: list[str], events: list[Event]) -> None:
        if not arguments or not self.calls:
            return
        text = "".join(arguments)
        arguments.clear()
        call = self.calls[-1]
        if call.name is None:
            call.held += text
            return
        call.arguments += text
        events.append(ArgumentsDelta(len(self.calls) - 1, text))

    def _send_answer(self, raw: str, events: list[Event], *, final: bool) -> None:
        text = _decode_prefix(raw, final=final)
        if len(text) > len(self._answer_sent):
            events.append(AnswerDelta(text[len(self._answer_sent):]))
            self._answer_sent = text


def _decode_prefix(raw: str, *, final: bool) -> str:
    """The decoded text of the longest prefix of a JSON string body that is whole."""
    for cut in range(len(raw), max(-1, len(raw) - 12), -1):
        try:
            text = json.loads(f'"{raw[:cut]}"')
        except json.JSONDecodeError:
            continue
        if not final and text and "\ud800" <= text[-1] <= "\udbff":
            text = text[:-1]  # the first half of a surrogate pair: wait for the second
        return text
    return ""
