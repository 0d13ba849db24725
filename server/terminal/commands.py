"""What the user typed → a question for the model or a slash command (pure parsing, no I/O).

A message whose first character is `/` is a command; `//` at the start sends the message with a
single leading `/` (for a question that starts with a path). An unknown command is an error
rather than a question, so a typo never reaches the model as a prompt.

`/doc` takes a path and `key=value` metadata, split like a shell line (quote a path or value
with spaces); `/system`, `/prompt` and `/save` take the rest of the line as it is.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass


class CommandError(ValueError):
    """A malformed command; its message is the one line shown to the user."""


@dataclass(frozen=True)
class CommandSpec:
    usage: str
    summary: str


# The one list of commands: parsing checks names against it and `/help` prints it.
COMMANDS: dict[str, CommandSpec] = {
    "doc": CommandSpec("/doc PATH [key=value ...]", "attach a document (with metadata, e.g. url=... date=...) to the next question"),
    "docs": CommandSpec("/docs", "list the documents attached to the next question"),
    "clear-docs": CommandSpec("/clear-docs", "drop the attached documents"),
    "plain": CommandSpec("/plain [on|off]", "toggle PLAINFORMAT (bare code answers, no markdown)"),
    "history": CommandSpec("/history [on|off]", "send earlier turns with each question, or each question alone"),
    "system": CommandSpec("/system [TEXT | --reset]", "show or set the system prompt (--reset: the server's default)"),
    "reset": CommandSpec("/reset", "forget the conversation and attached documents"),
    "save": CommandSpec("/save PATH", "write the conversation as a JSON list of OpenAI messages"),
    "prompt": CommandSpec("/prompt [QUESTION]", "show the exact prompt the server renders for the next turn"),
    "help": CommandSpec("/help", "this list"),
    "exit": CommandSpec("/exit", "leave (also Ctrl-D, or Ctrl-C at an empty prompt)"),
}
ALIASES = {"quit": "exit"}
SYSTEM_RESET = "--reset"
# "/name", then one whitespace character (a space or a new line), then the argument text.
_COMMAND_HEAD = re.compile(r"/(\S*)\s?(.*)", re.DOTALL)


@dataclass(frozen=True)
class Question:
    text: str


@dataclass(frozen=True)
class Command:
    name: str
    text: str | None = None  # /doc PATH, /save PATH, /system TEXT, /prompt QUESTION
    switch: bool | None = None  # /plain and /history: on, off, or None for toggle/show
    metadata: tuple[tuple[str, str], ...] = ()  # /doc key=value, in the order given


def parse_line(line: str) -> Question | Command | None:
    """One submitted input (it may span lines) → what to do; None for blank input."""
    if not line.strip():
        return None
    if line.startswith("//"):
        return Question(line[1:])
    if not line.startswith("/"):
        return Question(line)
    head, rest = _COMMAND_HEAD.fullmatch(line).groups()
    name = ALIASES.get(head, head)
    if name not in COMMANDS:
        raise CommandError(
            f"unknown command /{name}; /help lists the commands (start with // to send a leading /)"
        )
    return _PARSERS.get(name, _no_arguments)(name, rest.strip())


def _no_arguments(name: str, rest: str) -> Command:
    if rest:
        raise CommandError(f"/{name} takes no arguments (usage: {COMMANDS[name].usage})")
    return Command(name)


def _raw_text(name: str, rest: str) -> Command:
    return Command(name, text=rest or None)


def _switch(name: str, rest: str) -> Command:
    words = {"on": True, "off": False, "": None}
    if rest.lower() not in words:
        raise CommandError(f"/{name} takes on or off, got {rest!r} (usage: {COMMANDS[name].usage})")
    return Command(name, switch=words[rest.lower()])


def _split(name: str, rest: str) -> list[str]:
    try:
        return shlex.split(rest)
    except ValueError as error:  # an unclosed quote
        raise CommandError(f"/{name}: {error} (usage: {COMMANDS[name].usage})") from None


def _save(name: str, rest: str) -> Command:
    words = _split(name, rest)
    if len(words) != 1:
        raise CommandError(f"/save takes one path (usage: {COMMANDS[name].usage}; quote a path with spaces)")
    return Command(name, text=words[0])


def _doc(name: str, rest: str) -> Command:
    words = _split(name, rest)
    if not words:
        raise CommandError(f"/doc needs a file (usage: {COMMANDS[name].usage})")
    path, items = words[0], words[1:]
    metadata: dict[str, str] = {}
    for item in items:
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise CommandError(f"/doc metadata must be key=value, got {item!r}")
        if key.strip() in metadata:
            raise CommandError(f"/doc metadata key {key.strip()!r} is given twice")
        metadata[key.strip()] = value
    return Command(name, text=path, metadata=tuple(metadata.items()))


_PARSERS = {
    "doc": _doc,
    "plain": _switch,
    "history": _switch,
    "system": _raw_text,
    "prompt": _raw_text,
    "save": _save,
}


def help_text() -> str:
    width = max(len(spec.usage) for spec in COMMANDS.values())
    return "\n".join(f"  {spec.usage:<{width}}  {spec.summary}" for spec in COMMANDS.values())
