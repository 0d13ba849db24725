"""Reading one message from the terminal, with prompt_toolkit.

Why prompt_toolkit rather than the standard library: a pasted block must arrive as one message.
prompt_toolkit turns on the terminal's bracketed-paste mode and inserts the pasted text, new lines
and all, into the line being edited, so only the Enter typed afterwards sends it. The standard
library's `input()`/`readline` sees a paste as keystrokes, and each pasted new line would send a
message. prompt_toolkit also gives line editing, input history (Up/Down, Ctrl-R) and a help line
under the prompt, and it is pure Python and well kept (it is IPython's input layer).

Keys: Enter sends; Alt+Enter (or Esc then Enter) starts a new line by hand; Ctrl-C clears a line
being written and, at an empty prompt, leaves like Ctrl-D. When standard input is not a terminal
(a pipe or a file), each line is one message and nothing is drawn.
"""

from __future__ import annotations

import sys

from prompt_toolkit import PromptSession
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent

PROMPT = "USER: "
HELP_LINE = " Enter: send | Alt+Enter or Esc Enter: new line | /help: commands | Ctrl-D: quit "


def _key_bindings() -> KeyBindings:
    bindings = KeyBindings()

    @bindings.add("escape", "enter")
    def _new_line(event: KeyPressEvent) -> None:
        event.current_buffer.insert_text("\n")

    @bindings.add("c-c")
    def _clear_or_leave(event: KeyPressEvent) -> None:
        buffer = event.current_buffer
        if buffer.text:
            buffer.reset()
        else:
            event.app.exit(exception=EOFError)

    return bindings


class InputReader:
    def __init__(self) -> None:
        self._interactive = sys.stdin.isatty() and sys.stdout.isatty()
        self._session: PromptSession[str] | None = None
        if self._interactive:
            self._session = PromptSession(
                history=InMemoryHistory(),
                key_bindings=_key_bindings(),
                bottom_toolbar=HELP_LINE,
                prompt_continuation=lambda width, line, wrap: "." * (width - 1) + " ",
            )

    def read(self) -> str | None:
        """The next message, or None when the user leaves (Ctrl-D, Ctrl-C on an empty prompt)."""
        if self._session is None:
            line = sys.stdin.readline()
            return line.rstrip("\n") if line else None
        try:
            return self._session.prompt(PROMPT)
        except EOFError:
            return None
