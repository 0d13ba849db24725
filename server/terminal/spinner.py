"""The progress line while the client waits for the server: a spinner and what it waits for.

A background thread redraws one line on a terminal ten times a second and erases it when the
wait ends, so the answer starts on a clean line. Written to a pipe or a file, only the texts
given by `update` (what a long wait is waiting for) are printed, once each. ASCII frames: a
terminal without a UTF-8 locale shows them too.
"""

from __future__ import annotations

import os
import sys
import threading
from types import TracebackType
from typing import TextIO

FRAMES = "|/-\\"
FRAME_SECONDS = 0.1
CLEAR_TO_END = "\x1b[K"  # ANSI "erase in line": every terminal emulator in use knows it


class Spinner:
    def __init__(self, text: str, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout
        self._text = text
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._printed: str | None = None  # the last text written to a non-terminal

    def update(self, text: str) -> None:
        with self._lock:
            self._text = text
        if not self._interactive():
            self._print_once()

    def __enter__(self) -> Spinner:
        if self._interactive():
            self._thread = threading.Thread(target=self._run, name="chat-spinner", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _interactive(self) -> bool:
        return self._stream.isatty()

    def _columns(self) -> int:
        # The terminal's own width: a COLUMNS variable left in the environment may be stale.
        try:
            return os.get_terminal_size(self._stream.fileno()).columns
        except (OSError, ValueError):
            return 80

    def _print_once(self) -> None:
        with self._lock:
            if self._text != self._printed:
                self._stream.write(self._text + "\n")
                self._stream.flush()
                self._printed = self._text

    def _run(self) -> None:
        frame = 0
        while True:
            with self._lock:
                # One screen line at most: "\r" cannot go back over a wrapped line.
                width = self._columns() - 1
                line = f"{FRAMES[frame % len(FRAMES)]} {self._text}"[:width]
                self._stream.write("\r" + line + CLEAR_TO_END)
                self._stream.flush()
            frame += 1
            if self._stopped.wait(FRAME_SECONDS):
                break
        # Erases the whole line, a `^C` the terminal echoed after the text included.
        self._stream.write("\r" + CLEAR_TO_END)
        self._stream.flush()
