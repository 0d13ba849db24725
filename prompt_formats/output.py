"""R10 output clean-up, in one form for whole texts and one for streams that agree exactly.

The engine already stops on the stop strings and never returns them. What is left to clean is
what the engine cannot know: outer whitespace (the prompt ends in a space, so replies often start
with one) and a turn header the model began to write when it hit the token limit (`\\nUSER`,
`ASSIS…`) or wrote without a stop string to catch it (`ASSISTANT:`).

A *fragment* is the last whitespace-separated word of the stripped text when it is a prefix of
`USER:` or `ASSISTANT:` at least four characters long, standing at the start of the text or after
whitespace. It is dropped with the whitespace before it. Only one is dropped: the engine stops on
`USER:`, so chains of headers do not occur.

Choices the spec leaves open, marked *(ours)*:

- Fragments shorter than four characters (`U`, `US`, `USE`, `A`, `AS`, `ASS`) are kept *(ours)*:
  they are ordinary words often enough ("made in the US") that dropping them would damage
  answers, while the text they cost when really a cut-off header is small.
- A fragment glued to a word (`helloUSER`) is text *(ours)*: headers start on a word boundary.
- After a prefill (`continue_final_message`) the output continues the client's partial text, so
  its leading whitespace is content and is kept; pass `continuation=True` *(ours)*.

Streaming: `OutputShaper.feed` returns only text no later delta can take back, so a client never
sees text the final answer would not have. It holds back leading whitespace, trailing whitespace,
and a trailing word that is, or may still grow into, a fragment. The invariant, for any split of
any text: `"".join(map(shaper.feed, deltas)) + shaper.finish() == shape_output("".join(deltas))`.
"""

from __future__ import annotations

# The airoboros turn headers; a format whose turns are marked by special tokens (ChatML) has none
# to drop, and its output is only stripped.
TURN_HEADERS = ("USER:", "ASSISTANT:")
MIN_FRAGMENT_LENGTH = 4


def shape_output(text: str, *, continuation: bool = False, headers: tuple[str, ...] = TURN_HEADERS) -> str:
    """Strip the output and drop a trailing `USER:`/`ASSISTANT:` fragment (non-streaming R10)."""
    return _finish(text if continuation else text.lstrip(), boundary_before=True, headers=headers)


class OutputShaper:
    """Streaming `shape_output`: feed each text delta, send what comes back, then `finish()`."""

    def __init__(self, *, continuation: bool = False, headers: tuple[str, ...] = TURN_HEADERS):
        self._headers = headers
        self._held = ""
        # Nothing sent yet: the start of the text is a word boundary and leading whitespace
        # (unless continuing a prefill) is still to be dropped.
        self._at_start = True
        self._strip_leading = not continuation

    def feed(self, delta: str) -> str:
        """Take the next delta; return the text that is now safe to send (maybe empty)."""
        text = self._held + delta
        if self._at_start and self._strip_leading:
            text = text.lstrip()
        cut = _held_from(text, boundary_before=self._at_start, headers=self._headers)
        self._held = text[cut:]
        if cut:
            self._at_start = False
        return text[:cut]

    def finish(self) -> str:
        """The held-back text that survives the end of generation; the shaper is then empty."""
        held, self._held = self._held, ""
        return _finish(held, boundary_before=self._at_start, headers=self._headers)


def _is_header_prefix(word: str, headers: tuple[str, ...]) -> bool:
    # A plain loop: this runs for every streamed token, and a generator costs more than the test.
    for header in headers:
        if header.startswith(word):
            return True
    return False


def _is_fragment(word: str, headers: tuple[str, ...]) -> bool:
    return len(word) >= MIN_FRAGMENT_LENGTH and _is_header_prefix(word, headers)


def _last_word_start(text: str) -> int:
    """Index where the last whitespace-separated word of `text` (no trailing space) begins."""
    # `rsplit(None, 1)` splits at the last run of `str.isspace` characters, in C.
    words = text.rsplit(None, 1)
    return len(text) - len(words[-1]) if words else 0


def _finish(text: str, *, boundary_before: bool, headers: tuple[str, ...]) -> str:
    """`text` without trailing whitespace and without a trailing fragment.

    `boundary_before`: whether the position before `text` counts as a word boundary (start of
    the output, or whitespace already sent).
    """
    text = text.rstrip()
    start = _last_word_start(text)
    if (start > 0 or boundary_before) and _is_fragment(text[start:], headers):
        return text[:start].rstrip()
    return text


def _held_from(text: str, *, boundary_before: bool, headers: tuple[str, ...]) -> int:
    """Where the part of `text` that a later delta may still remove begins.

    That part is the trailing whitespace, plus the last word and the whitespace before it when
    the word is a fragment already or, with nothing after it yet, may still grow into one.
    """
    end = len(text.rstrip())
    start = _last_word_start(text[:end])
    word = text[start:end]
    at_boundary = start > 0 or boundary_before
    if word and at_boundary:
        may_grow = end == len(text)
        if _is_fragment(word, headers) or (may_grow and _is_header_prefix(word, headers)):
            return len(text[:start].rstrip())
    return end
