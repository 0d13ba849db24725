"""A terminal driven as a person drives it: tmux on a private socket, keys in, screen out.

Each `TmuxTerminal` runs one command in a detached tmux session on its own tmux server (`-L`
socket), so tests never touch a user's tmux. Every wait is bounded and fails with the screen's
text; `close()` kills the session and that server. When the command ends, its exit status is
written on the screen (`[terminal exit N]`) and the pane stays until the test closes it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence

import psutil

POLL_S = 0.05
# A tmux command is quick, but a CI machine busy with an engine's generation has stalled one for
# over 20 s; only a much longer wait means tmux itself hangs.
TMUX_COMMAND_TIMEOUT_S = 120
EXIT_MARK_TEXT = "[terminal exit "
EXIT_MARK = re.compile(re.escape(EXIT_MARK_TEXT) + r"(\d+)\]")


def tmux_available() -> bool:
    return shutil.which("tmux") is not None


class TmuxTerminal:
    def __init__(self, command: Sequence[str], *, cwd: str, env: dict[str, str], width: int = 160, height: int = 50) -> None:
        self.socket = f"airoboros-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.session = "chat"
        environment = [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
        # A shell runs the command and then writes its exit status on the screen and waits
        # (the test kills it). It reaps the command itself: tmux 3.3 sometimes leaves a pane's
        # exited process a zombie, never marking the pane dead. Its no-op INT trap keeps it
        # alive through the Ctrl-C the tests send; the command gets Ctrl-C as usual.
        script = f'trap : INT; "$@"; echo "{EXIT_MARK_TEXT}$?]"; exec sleep 600'
        self._tmux(
            "-f", "/dev/null", "new-session", "-d", "-s", self.session, "-x", str(width), "-y", str(height),
            "-c", cwd, *environment, "sh", "-c", script, "sh", *command,
        )
        self.socket_path = self._tmux("display-message", "-p", "#{socket_path}").strip()

    def _tmux(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-L", self.socket, *args],
            capture_output=True, text=True, timeout=TMUX_COMMAND_TIMEOUT_S, check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args[:3])} failed: {result.stderr.strip()}")
        return result.stdout

    def send_keys(self, *keys: str) -> None:
        """tmux key names (`Enter`, `C-c`, `Escape`) or literal text, in order."""
        self._tmux("send-keys", "-t", self.session, *keys)

    def type(self, text: str) -> None:
        """Literal text, as if typed (no key names)."""
        self._tmux("send-keys", "-t", self.session, "-l", text)

    def submit(self, text: str) -> None:
        self.type(text)
        self.send_keys("Enter")

    def paste(self, text: str) -> None:
        """A bracketed paste, as a terminal sends a clipboard paste to a program that asks for it."""
        self._tmux("set-buffer", "-b", "paste", text)
        self._tmux("paste-buffer", "-p", "-d", "-b", "paste", "-t", self.session)

    def screen(self) -> str:
        """The whole pane with its scrollback, wrapped lines joined."""
        return self._tmux("capture-pane", "-p", "-J", "-S", "-", "-t", self.session)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if predicate(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not on the screen after {timeout:.0f} s; screen:\n{text}")
            time.sleep(POLL_S)

    def wait_for_text(self, needle: str, timeout: float, *, count: int = 1) -> str:
        return self.wait_for(lambda text: text.count(needle) >= count, timeout, f"{needle!r} x{count}")

    def exit_status(self) -> int | None:
        """The command's exit status once it ended, else None."""
        found = EXIT_MARK.search(self.screen())
        return int(found.group(1)) if found else None

    def _process_state(self) -> str:
        """The command's process as `ps` sees it (the pane's shell's child), for a failure message."""
        shell = int(self._tmux("display-message", "-p", "-t", self.session, "#{pane_pid}").strip() or 0)
        try:
            children = psutil.Process(shell).children()
            return "; ".join(f"pid {c.pid} {c.status()}, {' '.join(c.cmdline())}" for c in children) or "no process"
        except psutil.Error as error:
            return f"shell {shell}: {error}"

    def wait_for_exit(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while (status := self.exit_status()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the command did not exit in {timeout:.0f} s ({self._process_state()}); screen:\n{self.screen()}"
                )
            time.sleep(POLL_S)
        return status

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._tmux("kill-server")
        # tmux leaves its socket file behind when killed.
        with contextlib.suppress(OSError):
            os.unlink(self.socket_path)


@contextlib.contextmanager
def tmux_terminal(command: Sequence[str], **kwargs) -> Iterator[TmuxTerminal]:
    terminal = TmuxTerminal(command, **kwargs)
    try:
        yield terminal
    finally:
        terminal.close()
