"""`airoboros-server merge BASE ADAPTER OUT`: arguments, progress bar, summary, plain errors.

A problem with the inputs is one line on stderr and a non-zero exit, with nothing written;
Ctrl-C or SIGTERM during the merge removes the partial output the same way.
"""

from __future__ import annotations

import argparse
import resource
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.merge.sizes import format_bytes, parse_size

if TYPE_CHECKING:  # torch and the merge itself load only when a merge runs, not for --help
    from server.merge.merge import MergeOptions, MergeSummary
    from server.merge.plan import TensorAction

DTYPES = ("bfloat16", "float16", "float32")
DEFAULT_MAX_SHARD_SIZE = "5GB"
PROGRAM = "airoboros-server merge"


def add_merge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("base", type=Path, metavar="BASE", help="the base checkpoint directory (MPT, 16/32-bit)")
    parser.add_argument("adapter", type=Path, metavar="ADAPTER", help="the peft LoRA adapter directory")
    parser.add_argument("out", type=Path, metavar="OUT", help="where to write the merged checkpoint")
    parser.add_argument(
        "--dtype", choices=DTYPES, default="bfloat16", help="dtype of the merged weights [default bfloat16]"
    )
    parser.add_argument(
        "--max-shard-size",
        type=parse_size,
        default=parse_size(DEFAULT_MAX_SHARD_SIZE),
        metavar="SIZE",
        help=f"largest output shard, e.g. 5GB, 500MB, 10GiB [default {DEFAULT_MAX_SHARD_SIZE}]",
    )
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.add_argument(
        "--base-nf4",
        action="store_true",
        help="merge into the NF4 round-trip of the base's linear weights, as QLoRA training saw them "
        "(needs bitsandbytes: the nf4 extra)",
    )


def peak_memory_bytes() -> int:
    """This process's peak resident memory since it started this program.

    Linux's VmHWM, not getrusage's ru_maxrss: the latter also counts the memory of the process
    that forked this one before it exec'd (a launcher, a test runner)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _summary(summary: MergeSummary, options: MergeOptions, seconds: float) -> str:
    peak = peak_memory_bytes()
    copied = summary.tensors - summary.merged - summary.replaced
    nf4 = f", {summary.nf4} through the NF4 round-trip" if options.base_nf4 else ""
    replaced = f", {summary.replaced} replaced (modules_to_save)" if summary.replaced else ""
    shards = f"{summary.shards} safetensors shard{'s' if summary.shards != 1 else ''}"
    dtype = str(options.dtype).removeprefix("torch.")
    base = f"base: {summary.base_shards} shards, {format_bytes(summary.base_bytes)}"
    return "\n".join(
        [
            f"merged into {summary.out}",
            f"  tensors: {summary.tensors} ({summary.merged} merged with LoRA{replaced}, {copied} copied{nf4})",
            f"  shards:  {shards}, {format_bytes(summary.bytes_written)} in {dtype} ({base})",
            f"  time:    {seconds:.1f} s, peak memory {format_bytes(peak)}",
        ]
    )


def run_merge(args: dict[str, Any]) -> int:
    started = time.monotonic()
    previous_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        import torch
        from tqdm import tqdm

        from server.merge.errors import MergeError
        from server.merge.merge import MergeOptions, merge, prepare_merge

        options = MergeOptions(
            dtype=getattr(torch, args["dtype"]),
            max_shard_bytes=args["max_shard_size"],
            force=args["force"],
            base_nf4=args["base_nf4"],
        )
        try:
            prepared = prepare_merge(args["base"], args["adapter"], args["out"], options)
            total = sum(output.nbytes for output in prepared.plan.outputs)
            with tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1000, desc="merging", file=sys.stderr
            ) as bar:

                def advance(action: TensorAction) -> None:
                    bar.set_postfix_str(action.base.shard.name, refresh=False)
                    bar.update(action.output.nbytes)

                summary = merge(prepared, on_tensor=advance)
        except MergeError as error:
            raise SystemExit(f"{PROGRAM}: {error}") from None
        except OSError as error:  # disk full, permissions: the partial output is already removed
            raise SystemExit(f"{PROGRAM}: {error}; nothing was written") from None
    except KeyboardInterrupt:
        raise SystemExit(f"{PROGRAM}: interrupted; nothing was written") from None
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    print(_summary(summary, options, time.monotonic() - started))
    return 0
