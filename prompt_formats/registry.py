"""The registry of prompt formats, so the server picks one by name from its settings.

It is small on purpose: a dict filled at import with the airoboros format, the default and the
format of every MPT checkpoint, and ChatML, the embedded stand-in model's own.
Registering refuses to replace a format of the same name unless asked, so two modules cannot
silently fight over a name.
"""

from __future__ import annotations

from prompt_formats.airoboros import AiroborosFormat
from prompt_formats.chatml import ChatMLFormat
from prompt_formats.protocol import PromptFormat

DEFAULT_FORMAT = "airoboros"

_formats: dict[str, PromptFormat] = {}


def register_format(fmt: PromptFormat, *, replace: bool = False) -> None:
    """Make `fmt` available as `get_format(fmt.name)`."""
    if not replace and fmt.name in _formats and _formats[fmt.name] is not fmt:
        raise ValueError(f"a prompt format named {fmt.name!r} is already registered")
    _formats[fmt.name] = fmt


def unregister_format(name: str) -> None:
    """Remove a format (tests register throwaway ones); unknown names are ignored."""
    _formats.pop(name, None)


def get_format(name: str = DEFAULT_FORMAT) -> PromptFormat:
    """The format registered as `name`; an unknown name is a `KeyError` listing the known ones."""
    try:
        return _formats[name]
    except KeyError:
        raise KeyError(
            f"unknown prompt format {name!r}; known formats: {', '.join(format_names())}"
        ) from None


def format_names() -> tuple[str, ...]:
    return tuple(sorted(_formats))


register_format(AiroborosFormat())
register_format(ChatMLFormat())
