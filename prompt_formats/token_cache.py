"""Token ids of a prompt given as pieces: each piece tokenized once, the ids joined, exactly.

A chat is re-sent whole on every turn, so tokenizing the whole prompt again repeats work the
server did for the previous turn (8.5 ms for an 8k-token chat with GPT-NeoX, almost all of it
old text). `TokenCache` keeps the ids of each piece of a `PromptLayout` (a message, an exchange's
reply) keyed by the piece's text, and the ids of a prompt are the pieces' ids joined.

The contract is exactness: the ids always equal `tokenize(whole prompt)`. Joining is only right
where the tokenizer would have split at the pieces' boundaries anyway. For byte-level BPE with a
regex pre-tokenizer (GPT-NeoX, SmolLM2, GPT-2 family) that holds at every boundary a format
makes (`layout.py` says which), because what decides a split there is the class of the last
character before it (letter, digit, other, space) and the fixed text after it, and merges never
cross a pre-token. Whether it holds for the tokenizer in use is checked once, when the cache is
built, on probe prompts whose pieces end in every kind of character (`joins_safely`). A
tokenizer that fails any probe (a SentencePiece model that merges across the boundary, an added
token that spans it) gets a full tokenization of the joined prompt on every call instead:
slower, never wrong.

Memory is bounded: a least-recently-used cache of at most `max_bytes`, counted as the size of
the key text plus the ids (tuples of ints, about 40 bytes a token; a tuple because joining
tuples costs a tenth of joining arrays, and the join is the common path). The default, 64 MiB,
holds about 1.5 million tokens, some 180 full 8k-token chats. A lock guards the cache, so
threads may share one; it is taken twice per lookup of a prompt's pieces, not once per piece,
and a missing piece is tokenized outside it.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from prompt_formats.messages import Conversation, Exchange, Turn

Tokenize = Callable[[str], Sequence[int]]

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# Bytes per cached int beyond the tuple's pointer to it (a small-int object), and per entry for
# the OrderedDict's own bookkeeping: rough, on the high side, so the limit holds.
_BYTES_PER_ID = 28
_BYTES_PER_ENTRY = 120


class PieceTokenizer(Protocol):
    """What history fitting needs: the ids and the token count of a prompt given as pieces."""

    def ids(self, pieces: Sequence[str]) -> list[int]: ...

    def count(self, pieces: Sequence[str]) -> int: ...


class WholeTokenizer:
    """Tokenizes the joined pieces in one call: exact for any tokenizer, with no cache."""

    def __init__(self, tokenize: Tokenize) -> None:
        self.tokenize = tokenize

    def ids(self, pieces: Sequence[str]) -> list[int]:
        return list(self.tokenize("".join(pieces)))

    def count(self, pieces: Sequence[str]) -> int:
        return len(self.tokenize("".join(pieces)))


class TokenCache:
    """A `tokenize` callable that also gives a prompt's ids from per-piece cached ids.

    Calling it tokenizes one text as `tokenize` does (no cache), so it can stand wherever a plain
    `tokenize` is expected. `ids(pieces)` and `count(pieces)` use the cache when the probes
    showed joining is exact for `tokenize`, and a full tokenization otherwise.
    `checked_for` names what the probes came from (a format's name), so a format can refuse a
    cache checked for another format's boundaries.
    """

    def __init__(
        self,
        tokenize: Tokenize,
        *,
        probes: Iterable[Sequence[str]],
        checked_for: str,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.tokenize = tokenize
        self.checked_for = checked_for
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self.unsafe_probe: tuple[str, ...] | None = None
        checked = 0
        for pieces in probes:
            checked += 1
            if list(tokenize("".join(pieces))) != [i for p in pieces for i in tokenize(p)]:
                self.unsafe_probe = tuple(pieces)
                break
        self.joins_safely = checked > 0 and self.unsafe_probe is None

    def __call__(self, text: str) -> list[int]:
        return list(self.tokenize(text))

    @property
    def cached_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._sizes.clear()
            self._bytes = 0

    def ids(self, pieces: Sequence[str]) -> list[int]:
        if not self.joins_safely:
            return list(self.tokenize("".join(pieces)))
        joined: list[int] = []
        for piece_ids in self._lookup(pieces):
            joined += piece_ids
        return joined

    def count(self, pieces: Sequence[str]) -> int:
        if not self.joins_safely:
            return len(self.tokenize("".join(pieces)))
        return sum(map(len, self._lookup(pieces)))

    def _lookup(self, pieces: Sequence[str]) -> list[tuple[int, ...]]:
        """Each piece's ids, tokenizing (outside the lock) only the pieces not cached."""
        entries = self._entries
        with self._lock:
            found = [entries.get(piece) for piece in pieces]
            for piece, piece_ids in zip(pieces, found):
                if piece_ids is not None:
                    entries.move_to_end(piece)
        if None not in found:
            return found  # type: ignore[return-value]
        new = {
            piece: tuple(self.tokenize(piece))
            for piece, piece_ids in zip(pieces, found)
            if piece_ids is None
        }
        with self._lock:
            for piece, piece_ids in new.items():
                self._store(piece, piece_ids)
        return [
            new[piece] if piece_ids is None else piece_ids
            for piece, piece_ids in zip(pieces, found)
        ]

    def _store(self, piece: str, piece_ids: tuple[int, ...]) -> None:
        if piece in self._entries:  # another thread stored it meanwhile
            self._entries.move_to_end(piece)
            return
        size = (
            sys.getsizeof(piece) + sys.getsizeof(piece_ids)
            + _BYTES_PER_ID * len(piece_ids) + _BYTES_PER_ENTRY
        )
        if size > self.max_bytes:
            return  # larger than the whole cache: used this once, never kept
        self._entries[piece] = piece_ids
        self._sizes[piece] = size
        self._bytes += size
        while self._bytes > self.max_bytes:
            oldest, _ = self._entries.popitem(last=False)
            self._bytes -= self._sizes.pop(oldest)


# Texts that end (and start) in every kind of character a tokenizer treats differently at a
# boundary: letters of several scripts, digits and other numbers, punctuation and symbols,
# apostrophes (contractions), combining marks, emoji sequences, added-token look-alikes, the
# format's own markers, and empty text. Message texts are stripped, so none ends in whitespace
# except the prefill's, which is always the last piece.
PROBE_TEXTS: tuple[str, ...] = (
    "", "a", "Hello world", "I", "x y z", "42", "year 1999", "x\u00b2", "\u00bd", "\u216b",
    "\u0663", ".", "Hi!", "what?", "a,", "quote'", "it's", "don't", "'s", "\"quoted\"",
    "(paren)", "[x]", "{y}", "<tag>", "</s>", "USER:", "ASSISTANT:", "a:", "-", "\u2014",
    "\u2026", "\u201csmart\u201d", "\u20ac5", "$", "#", "@", "\\", "/", "|", "~", "`code`",
    "```", "e\u0301", "\u00e9", "\u65e5\u672c\u8a9e", "\ud55c\uad6d\uc5b4", "\u0e44\u0e17\u0e22",
    "\u05e2\u05d1\u05e8\u05d9\u05ea", "\u0627\u0644\u0639\u0631\u0628\u064a\u0629",
    "\U0001f642", "\U0001f44d\U0001f3fd", "\U0001f3f3\ufe0f\u200d\U0001f308", "a\u200b",
    "line\nend", "x\n\ny", "a  b", "tab\tx", "<|endoftext|>", "<|im_end|>", "<|padding|>",
    "\u0301x", "BEGININSTRUCTION\nq\nENDINSTRUCTION", "PLAINFORMAT", "nbsp\u00a0x",
)
PROBE_PREFILLS: tuple[str, ...] = ("", "Well,", "```python\n", "a ", "x  ", "\n", "\u00e9")


def probe_conversations() -> list[Conversation]:
    """Conversations that put every probe text at every place a piece boundary follows it."""
    conversations = []
    for text in PROBE_TEXTS:
        turn = Turn(text)
        conversations.append(Conversation(text, (Exchange(turn, turn),), turn))
        conversations.append(Conversation(None, (Exchange(Turn("q"), turn),) * 2, turn))
    for prefill in PROBE_PREFILLS:
        for text in ("", "a", "</s>"):
            conversations.append(
                Conversation(text, (Exchange(Turn(text), Turn(text)),), Turn(text), Turn(prefill))
            )
    return conversations
