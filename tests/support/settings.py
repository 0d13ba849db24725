"""The settings `airoboros-server serve` would run with for these flags, parsed as the CLI parses
them (flags over AIROBOROS_* environment over defaults), without starting anything."""

from __future__ import annotations

from server.cli import build_parser, load_settings
from server.settings import Settings


def serve_settings(*flags: str) -> Settings:
    namespace = vars(build_parser().parse_args(["serve", *flags]))
    namespace.pop("command")
    return load_settings(namespace)
