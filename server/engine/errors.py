"""The engine's own errors: what went wrong, in the engine's terms.

The engine package never speaks HTTP. `api/` maps these onto OpenAI error bodies
(`server.api.encoders.frames.api_error_for`): a rejection is the client's 400, a dead engine a 503.
"""

from __future__ import annotations


class EngineError(Exception):
    """Any failure the engine reports to the server."""


class EngineDead(EngineError, RuntimeError):
    """The engine core process is gone; the server cannot generate any more."""


class EngineRejected(EngineError, ValueError):
    """The engine refuses the request as asked (a client mistake its checks caught).

    `param` names the request field at fault, in OpenAI's (and vLLM's) words, when one is.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class SchemaNotCompiled(EngineRejected):
    """A JSON schema the engine's grammar compiler refuses; `reason` is its own words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def as_rejection(error: BaseException) -> EngineRejected:
    """vLLM's request-validation errors, in the words the client should see."""
    message = str(error.args[0]) if error.args else str(error)
    return EngineRejected(message, getattr(error, "parameter", None))
