"""`airoboros-server`: the command line.

    airoboros-server serve [--model DIR] [--port 8000] ...   start the server
    airoboros-server prepare-default-model                   convert the embedded model now
    airoboros-server merge BASE ADAPTER OUT [--dtype ...]    merge a LoRA adapter into MPT
    airoboros-server plan --gpu h100-sxm --tensor-parallel-size 2   will MPT fit these GPUs?
    airoboros-server chat [--url URL] [--model NAME] ...     chat with a running server

Every `serve` flag is a field of `server.settings.Settings`, so each also has an
`AIROBOROS_<NAME>` environment variable; a flag given on the command line wins.
"""

from __future__ import annotations

import argparse
import logging
import sys
import typing
from typing import Any

from pydantic import ValidationError

from server import __version__
from server.merge.command import add_merge_arguments, run_merge
from server.settings import Settings
from server.terminal import add_chat_arguments

# Settings that must never appear on a command line (visible in `ps`, shell history).
ENVIRONMENT_ONLY = {"api_keys"}


def _is_bool(annotation: Any) -> bool:
    """`bool`, or `bool | None` (a switch whose default the server decides)."""
    return annotation is bool or set(typing.get_args(annotation)) == {bool, type(None)}


def _is_list(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _is_list(typing.get_args(annotation)[0])
    return origin is list


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    for name, field in Settings.model_fields.items():
        if name in ENVIRONMENT_ONLY:
            continue
        flag = "--" + name.replace("_", "-")
        env = f"AIROBOROS_{name.upper()}"
        default = field.default if field.default_factory is None else field.default_factory()
        help_text = f"{field.description or ''} [env {env}; default {default}]".strip()
        # SUPPRESS keeps flags that were not given out of the namespace, so the environment
        # and the defaults still apply to them.
        if _is_bool(field.annotation):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        elif _is_list(field.annotation):
            parser.add_argument(flag, default=argparse.SUPPRESS, metavar="A,B", help=help_text)
        else:
            parser.add_argument(flag, default=argparse.SUPPRESS, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="airoboros-server",
        description="OpenAI-compatible server for airoboros-mpt-30b-gpt4-1p4 on vLLM.",
    )
    parser.add_argument("--version", action="version", version=f"airoboros-server {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="start the HTTP server")
    add_settings_flags(serve)
    prepare = commands.add_parser(
        "prepare-default-model", help="convert the embedded default model (SmolLM2-135M) now"
    )
    prepare.add_argument("--cache-dir", default=argparse.SUPPRESS, help="where to convert it to")
    merge = commands.add_parser(
        "merge", help="merge a peft LoRA adapter into an MPT base checkpoint, shard by shard"
    )
    add_merge_arguments(merge)
    # Its own parser (server.gpu.plan): listed here for --help, dispatched before this parser runs.
    commands.add_parser("plan", add_help=False, help="size MPT for given GPUs (plan --help)")
    chat = commands.add_parser("chat", help="chat with a running server in this terminal")
    add_chat_arguments(chat)
    return parser


def load_settings(flags: dict[str, Any]) -> Settings:
    try:
        return Settings(**flags)
    except ValidationError as error:
        problems = "; ".join(
            f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}" for e in error.errors()
        )
        raise SystemExit(f"airoboros-server: invalid settings: {problems}") from None


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["plan"]:  # no serve settings: plan reads none of them
        from server.gpu.plan import main as plan_main

        return plan_main(argv[1:])
    args = vars(build_parser().parse_args(argv))
    command = args.pop("command")
    if command == "merge":  # an offline tool: none of the serve settings apply
        return run_merge(args)
    if command == "chat":  # a client: the server's settings and environment do not apply
        from server.terminal.app import main as chat_main

        return chat_main(args)
    settings = load_settings(args)
    configure_logging(settings.log_level)
    if command == "prepare-default-model":
        from server.engine.args import apply_engine_environment
        from server.engine.default_model import prepare_default_model

        apply_engine_environment(settings)
        print(prepare_default_model(settings.resolved_cache_dir()))
        return 0
    from server.engine.args import kv_offload_problem, model_runner_problem

    # Before anything loads: vLLM itself would find out only once its config or workers are up.
    for problem in (kv_offload_problem(settings), model_runner_problem(settings)):
        if problem is not None:
            raise SystemExit(f"airoboros-server: {problem}")
    if settings.api_key_file is not None:
        if not settings.api_key_file.is_file():
            raise SystemExit(f"airoboros-server: API key file {settings.api_key_file} does not exist")
        # An empty key file would silently turn authentication off: refuse it instead.
        if not settings.load_api_keys():
            raise SystemExit(f"airoboros-server: API key file {settings.api_key_file} holds no key")
    from server.ops.tls import tls_problem

    if (problem := tls_problem(settings)) is not None:
        raise SystemExit(f"airoboros-server: {problem}")
    from server.serve import run

    return run(settings)


__all__ = ["main", "build_parser"]
