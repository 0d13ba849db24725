"""Uniting a format's stop strings with a client's `stop` field (R10).

The format's stops end a turn the way the model was trained to, so a client's list adds to them
and never replaces them. Order is kept (format first, then the client's in its order) so the
engine sees the same list for the same request; duplicates are removed. An empty client string
is skipped *(ours)*: it would match everywhere and end generation before it starts.
"""

from __future__ import annotations

from collections.abc import Sequence

from prompt_formats.errors import PromptFormatError


def merge_stops(format_stops: Sequence[str], client_stop: str | Sequence[str] | None) -> list[str]:
    """`format_stops` followed by the client's new, non-empty stop strings."""
    if client_stop is None:
        client: Sequence[object] = ()
    elif isinstance(client_stop, str):
        client = (client_stop,)
    elif isinstance(client_stop, Sequence):
        client = client_stop
    else:
        raise _invalid()
    merged = list(dict.fromkeys(format_stops))
    seen = set(merged)
    for stop in client:
        if not isinstance(stop, str):
            raise _invalid()
        if stop and stop not in seen:
            seen.add(stop)
            merged.append(stop)
    return merged


def _invalid() -> PromptFormatError:
    return PromptFormatError(
        "'stop' must be a string or a list of strings.", param="stop", code="invalid_stop"
    )
