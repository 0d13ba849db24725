"""The server, seen through the OpenAI SDK: its models, streamed answers, renders, and errors.

Every failure the user can meet becomes a `ChatError` holding one plain line (never a traceback):
an unreachable server, a refused API key, an unknown model, a refused request. A 503 (the model
still loading, a replica draining or restarting) is waited out with a spinner, retrying at the
server's `Retry-After`, because it ends by itself; Ctrl-C ends the wait.

The SDK's own retries are off (`max_retries=0`): they would hide a 503 wait without a word, and
retry a refused connection for seconds before saying anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import openai

from server.terminal.session import ChatRequest
from server.terminal.spinner import Spinner

# The airoboros-server response header that counts the messages `history: "fit"` dropped.
DROPPED_MESSAGES_HEADER = "X-Airoboros-Dropped-Messages"
REQUEST_TIMEOUT_S = 120.0  # per read; a streaming server sends keep-alive comments meanwhile
UNAVAILABLE_WAIT_LIMIT_S = 1800.0  # a 30B model may take many minutes to load, but not forever
RETRY_DELAY_S = (1.0, 10.0)  # the bounds put on the server's Retry-After

T = TypeVar("T")
Progress = Callable[[str], None]  # shows what a wait is waiting for


class ChatError(Exception):
    """A failure to show as one line."""


@dataclass(frozen=True)
class ServerInfo:
    model: str
    models: tuple[str, ...]
    # The card's `prompt_format` (airoboros-server only): None on any other OpenAI server.
    prompt_format: str | None
    max_model_len: int | None


def server_info(cards: Sequence[dict], wanted: str | None) -> ServerInfo:
    """`/v1/models`' cards → the model to talk to and what the server offers."""
    names = tuple(str(card.get("id")) for card in cards)
    if not names:
        raise ChatError("the server lists no models")
    model = wanted or names[0]
    if model not in names:
        raise ChatError(f"model {model!r} is not served there; it serves: {', '.join(names)}")
    card = cards[names.index(model)]
    prompt_format = card.get("prompt_format")
    max_model_len = card.get("max_model_len")
    return ServerInfo(
        model=model,
        models=names,
        prompt_format=prompt_format if isinstance(prompt_format, str) else None,
        max_model_len=max_model_len if isinstance(max_model_len, int) else None,
    )


def error_body(error: openai.APIStatusError) -> dict:
    """The OpenAI error object (`message`, `code`, ...) however the SDK version nests it."""
    body = error.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    return body if isinstance(body, dict) else {}


def error_code(error: openai.APIStatusError) -> str | None:
    code = error_body(error).get("code")
    return str(code) if code is not None else None


def error_message(error: openai.APIStatusError) -> str:
    message = error_body(error).get("message")
    if isinstance(message, str) and message:
        return " ".join(message.split())
    text = error.response.text.strip() if error.response is not None else ""
    return " ".join(text.split())[:200] or error.response.reason_phrase


def connection_failure(error: openai.APIConnectionError) -> str:
    """What went wrong underneath (refused, reset, ...): the SDK's own message only says "Connection error"."""
    cause = error.__cause__ or error.__context__
    return str(cause) if cause is not None and str(cause) else error.message


def retry_delay(error: openai.APIStatusError) -> float:
    low, high = RETRY_DELAY_S
    try:
        asked = float(error.response.headers.get("retry-after", low))
    except ValueError:
        asked = low
    return min(max(asked, low), high)


class AnswerStream:
    """One streamed answer: iterate for its text pieces; closing it makes the server abort."""

    def __init__(self, stream: Any, dropped_messages: int) -> None:
        self._stream = stream
        self.dropped_messages = dropped_messages
        self.finish_reason: str | None = None

    def __iter__(self) -> Iterator[str]:
        for chunk in self._stream:
            for choice in chunk.choices:
                if choice.finish_reason is not None:
                    self.finish_reason = choice.finish_reason
                if choice.delta is not None and choice.delta.content:
                    yield choice.delta.content

    def close(self) -> None:
        self._stream.close()


class ServerClient:
    def __init__(self, url: str, api_key: str | None) -> None:
        self.url = url.rstrip("/")
        base_url = self.url if self.url.endswith("/v1") else self.url + "/v1"
        # The SDK insists on a key; a server without keys ignores this placeholder.
        self._sdk = openai.OpenAI(
            base_url=base_url, api_key=api_key or "no-key", max_retries=0, timeout=REQUEST_TIMEOUT_S
        )
        self._has_key = api_key is not None

    def connect(self, wanted_model: str | None) -> ServerInfo:
        try:
            page = self._call(self._sdk.models.list)
        except StatusError as problem:
            if problem.status != 404:
                raise
            raise ChatError(f"{self.url} has no /v1/models: is it an OpenAI-compatible server's address?") from None
        return server_info([model.to_dict() for model in page.data], wanted_model)

    def open_answer(self, request: ChatRequest, progress: Progress | None = None) -> AnswerStream:
        raw = self._call(
            lambda: self._sdk.chat.completions.with_raw_response.create(
                **request.arguments, stream=True, extra_body=request.extensions or None
            ),
            progress,
        )
        dropped = raw.headers.get(DROPPED_MESSAGES_HEADER, "0")
        return AnswerStream(raw.parse(), int(dropped) if dropped.isdigit() else 0)

    def read_answer(self, answer: AnswerStream) -> Iterator[str]:
        """The answer's pieces; an error event in the stream, or the stream breaking off (the
        SDK lets its HTTP library's transport errors through here), becomes a `ChatError`."""
        try:
            yield from answer
        except openai.APIConnectionError as error:
            raise ChatError(f"the answer broke off: {connection_failure(error)}") from None
        except openai.APIError as error:
            raise self._explain(error) from None
        except Exception as error:  # noqa: BLE001 - a connection lost mid-answer: one line, not a traceback
            raise ChatError(f"the answer broke off: {error or type(error).__name__}") from None

    def render(self, request: ChatRequest) -> dict:
        """airoboros-server's `/v1/chat/render`: the exact prompt of `request`, no generation."""
        return self._call(lambda: self._sdk.post("/chat/render", body=request.body(), cast_to=object))

    def _call(self, call: Callable[[], T], progress: Progress | None = None) -> T:
        """`call()`, waiting out 503s; every other failure is a `ChatError`.

        The wait is shown through `progress` (the caller's spinner), or a spinner of its own.
        """
        spinner: Spinner | None = None
        started = time.monotonic()
        try:
            while True:
                try:
                    return call()
                except openai.APIStatusError as error:
                    waited = time.monotonic() - started
                    if error.status_code != 503 or waited > UNAVAILABLE_WAIT_LIMIT_S:
                        raise self._explain(error) from None
                    delay = retry_delay(error)
                    text = (
                        f"the server is unavailable (503: {error_message(error)}); "
                        f"retrying every {delay:g} s, {waited:.0f} s so far; Ctrl-C stops"
                    )
                    if progress is None:
                        spinner = Spinner(text).__enter__()
                        progress = spinner.update
                    progress(text)
                    time.sleep(delay)
                except openai.APIError as error:
                    raise self._explain(error) from None
        finally:
            if spinner is not None:
                spinner.stop()

    def _explain(self, error: openai.APIError) -> ChatError:
        if isinstance(error, openai.APITimeoutError):
            return ChatError(f"the server at {self.url} did not answer within {REQUEST_TIMEOUT_S:g} s")
        if isinstance(error, openai.APIConnectionError):
            return ChatError(f"cannot reach the server at {self.url}: {connection_failure(error)}")
        if isinstance(error, openai.AuthenticationError):
            hint = "check --api-key or $OPENAI_API_KEY" if self._has_key else "give one with --api-key or $OPENAI_API_KEY"
            return ChatError(f"the server refused the API key (401: {error_message(error)}); {hint}")
        if isinstance(error, openai.APIStatusError):
            return StatusError(error.status_code, error_code(error), error_message(error))
        return ChatError(f"the server's stream failed: {error.message}")


class StatusError(ChatError):
    """An HTTP error answer; `code` is the OpenAI error code (`context_length_exceeded`, ...)."""

    def __init__(self, status: int, code: str | None, message: str) -> None:
        super().__init__(f"the server answered {status}: {message}")
        self.status = status
        self.code = code
