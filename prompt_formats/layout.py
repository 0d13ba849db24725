"""A rendered prompt as pieces: what history fitting drops and what token ids are cached by.

A format lays a conversation out as its system part, one tuple of pieces per earlier exchange,
and the final pieces (the last user message and the assistant's head, with any prefill). Joined,
the pieces are the prompt, character for character. Two things use the split:

- history fitting (`history.py`) drops whole exchanges from the front, and
- the token cache (`token_cache.py`) tokenizes each piece once and joins the ids, where the
  tokenizer in use was checked to split at the pieces' boundaries anyway.

Why `opening` is not a piece of its own: the text between the system part and the first kept
piece (a space in airoboros) would be a piece ending in whitespace, and tokenizers attach a
space to the word after it (` USER` is one pre-token for GPT-NeoX), so that boundary is never
safe to join at. It is glued to whichever piece comes first instead; that piece is then a
different text (and cache entry) when it opens the prompt than when it follows an exchange.
For the same reason a format must only end a piece (other than the last) where the text ends in
something other than whitespace: GPT-NeoX has tokens for runs of spaces, which would span it.
"""

from __future__ import annotations

from dataclasses import dataclass

Pieces = tuple[str, ...]


@dataclass(frozen=True)
class PromptLayout:
    """The pieces of one prompt; `prompt(drop)` is it without the `drop` oldest exchanges."""

    system: str
    exchanges: tuple[Pieces, ...]
    final: Pieces
    opening: str = ""

    def pieces(self, drop: int = 0) -> list[str]:
        """The prompt's pieces with the `drop` oldest exchanges left out, in order."""
        rest = [piece for exchange in self.exchanges[drop:] for piece in exchange]
        rest += self.final
        return [self.system, self.opening + rest[0], *rest[1:]]

    def prompt(self, drop: int = 0) -> str:
        return "".join(self.pieces(drop))
