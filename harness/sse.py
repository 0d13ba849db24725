"""Reading a server-sent event stream line by line: `data:` events and comments."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field


@dataclass
class SSEEvent:
    """One SSE line of interest: `data` (a JSON string or `[DONE]`) or a comment."""

    data: str | None = None
    comment: str | None = None
    at: float = field(default_factory=time.monotonic)

    def json(self) -> dict:
        assert self.data is not None and self.data != "[DONE]"
        return json.loads(self.data)

    @property
    def is_done(self) -> bool:
        return self.data == "[DONE]"

    @property
    def is_error(self) -> bool:
        return self.data is not None and self.data.startswith('{"error"')

    @property
    def content(self) -> str:
        """The text a chat or completion chunk carries ('' for the role chunk and comments)."""
        if self.data is None or self.is_done or self.is_error:
            return ""
        text = ""
        for choice in self.json().get("choices", []):
            text += (choice.get("delta") or {}).get("content") or choice.get("text") or ""
        return text


def parse_sse_line(line: str) -> SSEEvent | None:
    if line.startswith("data: "):
        return SSEEvent(data=line[len("data: "):])
    if line.startswith(":"):
        return SSEEvent(comment=line[1:].strip())
    return None
