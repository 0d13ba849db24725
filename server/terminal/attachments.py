"""`/doc PATH key=value ...` → one entry of the chat request's `documents` field.

The file is read and checked here, when it is attached, so a missing file, a binary file or a
document the server would refuse (a delimiter word such as `ENDINPUT` on a line of its own) is
reported at once, by `prompt_formats`' own rules, instead of after the question was typed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prompt_formats import PromptFormatError, parse_documents


class AttachmentError(ValueError):
    """A document that cannot be attached; its message is the one line shown to the user."""


@dataclass(frozen=True)
class Attachment:
    path: str
    document: dict  # {"text", "metadata"}: what the request's `documents` field carries

    def describe(self) -> str:
        """One line for `/docs`: the file, its size and metadata."""
        metadata = ", ".join(f"{key}={value}" for key, value in self.document["metadata"].items())
        size = f"{len(self.document['text'])} characters"
        return f"{self.path} ({size})" + (f" [{metadata}]" if metadata else "")


def load_document(path: str, metadata: Sequence[tuple[str, str]]) -> Attachment:
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AttachmentError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise AttachmentError(f"{path} is a directory, not a file") from None
    except UnicodeDecodeError:
        raise AttachmentError(f"{path} is not UTF-8 text") from None
    except OSError as error:
        raise AttachmentError(f"cannot read {path}: {error.strerror or error}") from None
    if not text.strip():
        raise AttachmentError(f"{path} is empty")
    document = {"text": text, "metadata": dict(metadata)}
    try:
        parse_documents([document])
    except PromptFormatError as error:
        raise AttachmentError(f"{path}: {error.message}") from None
    return Attachment(path, document)
