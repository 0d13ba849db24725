"""The `chat` subcommand's flags.

Sampling defaults are the model card's own advice for its terminal chat (FastChat's CLI run with
`--temperature 0.5 --max-new-tokens 2048`), so a plain `airoboros-server chat` talks to the model
as its authors did.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

DEFAULT_URL = "http://127.0.0.1:8000"
CARD_TEMPERATURE = 0.5
CARD_MAX_NEW_TOKENS = 2048
API_KEY_VARIABLE = "OPENAI_API_KEY"


@dataclass(frozen=True)
class ChatOptions:
    url: str
    model: str | None
    api_key: str | None
    temperature: float
    max_new_tokens: int
    system: str | None
    history: bool
    plain: bool


def _temperature(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 2:
        raise argparse.ArgumentTypeError(f"must be between 0 and 2, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _http_url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"must start with http:// or https://, got {text!r}")
    return text


def add_chat_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", type=_http_url, default=DEFAULT_URL, help=f"the server's address [default {DEFAULT_URL}]")
    parser.add_argument("--model", default=None, help="the model name [default: the server's first model]")
    parser.add_argument(
        "--api-key", default=None,
        help=f"the server's API key [default: ${API_KEY_VARIABLE}; the environment keeps it out of `ps`]",
    )
    parser.add_argument(
        "--temperature", type=_temperature, default=CARD_TEMPERATURE,
        help=f"sampling temperature, 0-2 [default {CARD_TEMPERATURE}, the model card's]",
    )
    parser.add_argument(
        "--max-new-tokens", type=_positive_int, default=CARD_MAX_NEW_TOKENS,
        help=f"room kept for each answer; older turns are dropped to make it [default {CARD_MAX_NEW_TOKENS}]",
    )
    parser.add_argument("--system", default=None, metavar="TEXT", help="the system prompt [default: the server's]")
    parser.add_argument(
        "--no-history", dest="history", action="store_false",
        help="send each question alone, without the earlier turns (the model card's advice)",
    )
    parser.add_argument("--plain", action="store_true", help="start with PLAINFORMAT on (bare code answers)")


def chat_options(arguments: dict) -> ChatOptions:
    """The parsed flags, with the API key taken from the environment when no flag gave one."""
    return ChatOptions(
        url=arguments["url"],
        model=arguments["model"],
        api_key=arguments["api_key"] or os.environ.get(API_KEY_VARIABLE) or None,
        temperature=arguments["temperature"],
        max_new_tokens=arguments["max_new_tokens"],
        system=arguments["system"],
        history=arguments["history"],
        plain=arguments["plain"],
    )
