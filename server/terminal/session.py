"""The conversation: what was said, what the next request carries, and `/save`.

Documents and PLAINFORMAT apply to one question: the request carries them in the server's
`documents` and `plainformat` fields, and the server renders them into that user message. Once
answered, the exchange is kept with the user message *as the model saw it* (the BEGININPUT …
ENDINSTRUCTION block, the ` PLAINFORMAT` keyword), built by `prompt_formats`, the same code the
server renders with. So later turns still show the model its documents, and `/save` writes
messages that render to the very same prompt when sent again.

With history off, each question is sent alone (the model card's advice against tokenization
errors in long chats), but every exchange is still kept for `/save`.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from prompt_formats import get_format

from server.terminal.attachments import Attachment


@dataclass(frozen=True)
class ChatRequest:
    """One chat request: the OpenAI SDK's own arguments and the airoboros extensions."""

    question: str
    attachments: tuple[Attachment, ...]
    plainformat: bool
    arguments: dict  # model, messages, temperature, max_tokens
    extensions: dict  # documents, plainformat, history: sent as the SDK's `extra_body`

    def body(self) -> dict:
        """The JSON body, as `/v1/chat/render` takes it."""
        return {**self.arguments, **self.extensions}


@dataclass
class Session:
    model: str
    temperature: float
    max_new_tokens: int
    system: str | None = None  # None: the server's default system prompt
    history: bool = True
    plainformat: bool = False
    # The server's prompt format (its model card's `prompt_format`); None for a server that is
    # not airoboros-server, which gets no extension fields.
    prompt_format: str | None = None
    attachments: list[Attachment] = field(default_factory=list)
    exchanges: list[tuple[str, str]] = field(default_factory=list)  # (user as rendered, answer)

    @property
    def extensions_supported(self) -> bool:
        return self.prompt_format is not None

    def request(self, question: str, *, max_tokens: int | None = None) -> ChatRequest:
        messages: list[dict] = []
        if self.system is not None:
            messages.append({"role": "system", "content": self.system})
        if self.history:
            messages += self._exchange_messages()
        messages.append({"role": "user", "content": question})
        extensions: dict = {}
        if self.extensions_supported:
            # The server drops the oldest exchanges when the chat outgrows the context and says
            # how many in a response header.
            extensions["history"] = "fit"
            if self.plainformat:
                extensions["plainformat"] = True
            if self.attachments:
                extensions["documents"] = [attachment.document for attachment in self.attachments]
        return ChatRequest(
            question=question,
            attachments=tuple(self.attachments),
            plainformat=self.plainformat and self.extensions_supported,
            arguments={
                "model": self.model,
                "messages": messages,
                "temperature": self.temperature,
                "max_tokens": max_tokens or self.max_new_tokens,
            },
            extensions=extensions,
        )

    def record(self, request: ChatRequest, answer: str) -> None:
        """Keep an answered exchange; its documents are used up."""
        self.exchanges.append((self._as_rendered(request), answer))
        self.attachments.clear()

    def reset(self) -> None:
        self.exchanges.clear()
        self.attachments.clear()

    def messages(self) -> list[dict]:
        """The whole conversation as OpenAI messages (the system prompt first when one is set)."""
        system = [] if self.system is None else [{"role": "system", "content": self.system}]
        return system + self._exchange_messages()

    def save(self, path: str) -> int:
        """Write `messages()` as JSON, atomically: a failed write leaves no partial file."""
        target = Path(path).expanduser()
        messages = self.messages()
        text = json.dumps(messages, ensure_ascii=False, indent=2) + "\n"
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or Path("."))
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                file.write(text)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return len(messages)

    def _exchange_messages(self) -> list[dict]:
        messages: list[dict] = []
        for user, assistant in self.exchanges:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        return messages

    def _as_rendered(self, request: ChatRequest) -> str:
        if not (request.attachments or request.plainformat):
            return request.question
        fmt = get_format(self.prompt_format)
        conversation = fmt.conversation(  # type: ignore[attr-defined]
            [{"role": "user", "content": request.question}],
            documents=[attachment.document for attachment in request.attachments] or None,
            plainformat=request.plainformat,
        )
        return conversation.last_user.text
