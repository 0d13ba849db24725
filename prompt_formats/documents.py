"""The `documents` extension: closed-context question answering in airoboros' own layout (R12).

airoboros 1.4 was trained on `BEGININPUT … ENDINPUT` blocks followed by a
`BEGININSTRUCTION … ENDINSTRUCTION` block, and to answer from those blocks only. Clients should
not have to hand-write that layout, so the extension builds exactly the text the model saw:

    BEGININPUT
    BEGINCONTEXT
    key: value
    ENDCONTEXT
    {text}
    ENDINPUT
    BEGININSTRUCTION
    {last user message}
    ENDINSTRUCTION

Why the validation: a delimiter word on a line of its own inside a document would end the block
early and let document text pose as an instruction (prompt injection through retrieved text), so
such documents are refused rather than rendered. Every error has code `invalid_documents` and
param `documents`.

Choices the spec leaves open, marked *(ours)*:

- A delimiter counts when it is a whole line after stripping the line's own whitespace, with
  any line break `str.splitlines` knows *(ours)*; `ENDINPUT.` or `the ENDINPUT marker` are text.
- Document text and metadata values are stripped like message content (R7); keys are stripped
  and must then be non-empty *(ours)*. Values may span lines, as the spec's delimiter rule
  implies; they must not hold a delimiter line.
- An empty `documents` list renders nothing: the prompt is the one without the extension *(ours)*.
- The user's instruction is not checked for delimiters *(ours)*: it is the client's own prompt,
  and hand-written blocks there (golden case G4) are legitimate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prompt_formats.errors import PromptFormatError

DELIMITERS = (
    "BEGININPUT",
    "BEGINCONTEXT",
    "ENDCONTEXT",
    "ENDINPUT",
    "BEGININSTRUCTION",
    "ENDINSTRUCTION",
)
_DELIMITER_SET = frozenset(DELIMITERS)


@dataclass(frozen=True)
class Document:
    """One validated input block: stripped text and metadata items in the client's order."""

    text: str
    metadata: tuple[tuple[str, str], ...] = ()


def parse_documents(documents: Sequence[Mapping[str, Any]]) -> tuple[Document, ...]:
    """Validate the `documents` request field; raises `PromptFormatError` (`invalid_documents`)."""
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
        raise _invalid("'documents' must be a list of {\"text\", \"metadata\"} objects.")
    return tuple(
        _parse_document(document, f"documents[{index}]") for index, document in enumerate(documents)
    )


def render_closed_context(documents: Sequence[Document], instruction: str) -> str:
    """The input blocks, then the instruction block: the text of the last user message."""
    lines: list[str] = []
    for document in documents:
        lines += ["BEGININPUT", "BEGINCONTEXT"]
        lines += [f"{key}: {value}" for key, value in document.metadata]
        lines += ["ENDCONTEXT", document.text, "ENDINPUT"]
    lines += ["BEGININSTRUCTION", instruction, "ENDINSTRUCTION"]
    return "\n".join(lines)


def _parse_document(document: Any, where: str) -> Document:
    if not isinstance(document, Mapping):
        raise _invalid(f"{where} must be an object with a 'text' string.")
    text = document.get("text")
    if not isinstance(text, str):
        raise _invalid(f"{where}.text must be a string.")
    _refuse_delimiter_lines(text, f"{where}.text")

    raw_metadata = document.get("metadata")
    if raw_metadata is None:
        raw_metadata = {}
    if not isinstance(raw_metadata, Mapping):
        raise _invalid(f"{where}.metadata must be an object of string values.")
    metadata: list[tuple[str, str]] = []
    for key, value in raw_metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise _invalid(f"{where}.metadata must map strings to strings.")
        name = key.strip()
        if not name or ":" in name or len(name.splitlines()) > 1:
            raise _invalid(
                f"{where}.metadata key {key!r} must be non-empty and contain no ':' or line break."
            )
        _refuse_delimiter_lines(value, f"{where}.metadata[{key!r}]")
        metadata.append((name, value.strip()))
    return Document(text=text.strip(), metadata=tuple(metadata))


def _refuse_delimiter_lines(text: str, where: str) -> None:
    for line in text.splitlines():
        word = line.strip()
        if word in _DELIMITER_SET:
            raise _invalid(
                f"{where} contains the delimiter {word!r} on a line of its own, which would "
                "break the document layout the model reads."
            )


def _invalid(message: str) -> PromptFormatError:
    return PromptFormatError(message, param="documents", code="invalid_documents")
