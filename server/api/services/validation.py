"""Request checks every generating route shares, worded once."""

from __future__ import annotations

from server.errors import APIError, invalid_request
from server.settings import Settings


def check_n(n: int, settings: Settings) -> None:
    if n > settings.max_n:
        raise invalid_request(f"n={n} is more than this server allows ({settings.max_n}).", param="n")


def context_length_error(
    max_model_len: int, prompt_tokens: int, asked: int | None, *, what: str, param: str, hint: str = ""
) -> APIError:
    """The one wording of "too long" for every route (OpenAI's, with our numbers)."""
    if asked is None:
        detail = f"{prompt_tokens} in the {what}, with room for at least one completion token"
        total = prompt_tokens + 1
    else:
        detail = f"{prompt_tokens} in the {what}, {asked} in the completion"
        total = prompt_tokens + asked
    return invalid_request(
        f"This model's maximum context length is {max_model_len} tokens. However, you requested "
        f"{total} tokens ({detail}). Please reduce the length of the {what} or completion{hint}.",
        param=param, code="context_length_exceeded",
    )
