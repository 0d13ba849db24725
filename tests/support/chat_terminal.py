"""`airoboros-server chat` in a tmux terminal, and reading its screen.

The client's screen: a `USER: ` prompt line per message (an answer never holds one: the server
stops at `USER:`), the answer after `ASSISTANT: `, and `[chat] ` lines for the client's notes.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Callable, Iterator

import pytest

from server.terminal.app import NOTE_PREFIX
from harness.server import REPO_ROOT
from tests.support.tmux import TmuxTerminal, tmux_available, tmux_terminal

START_TIMEOUT_S = 120.0  # a Python start on a loaded 2-core machine, which CI has stalled for 20 s and more
PROMPT_LINE = re.compile(r"^USER:", re.MULTILINE)


def prompt_count(screen: str) -> int:
    return len(PROMPT_LINE.findall(screen))


@contextlib.contextmanager
def chat_terminal(url: str, *flags: str, api_key: str | None = None, expect_prompt: bool = True) -> Iterator[TmuxTerminal]:
    if not tmux_available():
        pytest.fail("tmux is not installed: `make test-tools` installs it (or apt-get install tmux)", pytrace=False)
    command = [sys.executable, "-m", "server", "chat", "--url", url, *flags]
    if api_key is not None:
        command += ["--api-key", api_key]
    # An empty OPENAI_API_KEY: the machine's own key never reaches a test server.
    env = {"OPENAI_API_KEY": "", "PYTHONUNBUFFERED": "1"}
    with tmux_terminal(command, cwd=str(REPO_ROOT), env=env) as terminal:
        if expect_prompt:
            terminal.wait_for(lambda s: prompt_count(s) >= 1, START_TIMEOUT_S, "the first USER: prompt")
        yield terminal


def send_and_wait(terminal: TmuxTerminal, text: str | None, timeout: float) -> str:
    """Submit `text` (None: only press Enter) and wait for the next prompt; the screen then."""
    before = prompt_count(terminal.screen())
    if text is None:
        terminal.send_keys("Enter")
    else:
        terminal.submit(text)
    return terminal.wait_for(lambda s: prompt_count(s) > before, timeout, f"the prompt after {text!r}")


def last_answer(screen: str) -> str:
    """The text of the last answer on the screen (it may span lines)."""
    start = screen.rindex("ASSISTANT: ") + len("ASSISTANT: ")
    end = PROMPT_LINE.search(screen, start)
    text = screen[start:end.start() if end else len(screen)]
    # The client's own notes after the answer, and a stop mark, are not part of it.
    for mark in ("\n" + NOTE_PREFIX, "^C"):
        text = text.split(mark)[0]
    return text.strip()


def answer_under_way(question: str, min_chars: int) -> Callable[[str], bool]:
    """A screen predicate: the answer to `question` (echoed first) shows `min_chars` or more."""

    def holds(screen: str) -> bool:
        asked = screen.rfind(question)
        return asked >= 0 and screen.rfind("ASSISTANT: ") > asked and len(last_answer(screen)) >= min_chars

    return holds
