"""The merge: every base tensor read, merged and written one at a time, shard after shard.

For a weight with a LoRA module: W ← W + scale · B·A, with W (optionally NF4 round-tripped in
its own dtype first), A and B in float32, and one cast to the output dtype at the end. Every
other tensor is cast to the output dtype (floating point only) and written as it is.

Memory: the base is read one shard at a time (a `.bin` shard stays memory-mapped only while its
tensors are written) and each output tensor goes to disk as soon as it is computed, so the peak
is about one base shard, the adapter, and a few float32 copies of the largest merged tensor,
never the model. Nothing is written before every input is checked (see `plan`), and OUT only
appears when complete (see `output_dir`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from server.merge.adapter import LoraAdapter
from server.merge.base_checkpoint import BaseCheckpoint, ShardReader, open_shard
from server.merge.errors import MergeError
from server.merge.nf4 import load_bitsandbytes, nf4_round_trip
from server.merge.output_dir import atomic_output, check_output, check_space
from server.merge.plan import MergePlan, TensorAction, plan_merge
from server.merge.safetensors_writer import ShardedSafetensorsWriter
from server.merge.side_files import SideFiles, find_side_files, write_side_files


@dataclass(frozen=True)
class MergeOptions:
    dtype: torch.dtype = torch.bfloat16
    max_shard_bytes: int = 5 * 10**9
    force: bool = False
    base_nf4: bool = False


@dataclass(frozen=True)
class MergeSummary:
    out: Path
    tensors: int
    merged: int
    replaced: int
    nf4: int
    base_shards: int
    base_bytes: int
    shards: int
    bytes_written: int
    files: list[str]


@dataclass(frozen=True)
class PreparedMerge:
    """Every input read and checked; nothing written yet."""

    base: BaseCheckpoint
    adapter: LoraAdapter
    plan: MergePlan
    side_files: SideFiles
    out: Path
    options: MergeOptions


def merged_tensor(action: TensorAction, reader: ShardReader) -> torch.Tensor:
    output = action.output
    if action.replacement is not None:
        return action.replacement.to(output.dtype)
    weight = reader.tensor(action.base.name)
    if action.nf4:
        weight = nf4_round_trip(weight)
    if action.lora is None:
        result = weight.to(output.dtype)
    else:
        merged = weight.to(torch.float32, copy=True)
        action.lora.add_to(merged)
        result = merged.to(output.dtype)
        del merged
    narrowed = weight.dtype != torch.float16 or action.lora is not None  # a float16 base can overflow too, merged
    if output.dtype == torch.float16 and narrowed and not torch.isfinite(result).all():
        raise MergeError(f"{output.name} does not fit float16 (values beyond ±65504); merge with --dtype bfloat16")
    return result


def prepare_merge(base_dir: Path, adapter_dir: Path, out: Path, options: MergeOptions) -> PreparedMerge:
    """Read and check BASE, ADAPTER and OUT; raise MergeError on the first problem."""
    check_output(out, options.force, {"base": base_dir, "adapter": adapter_dir})
    base = BaseCheckpoint.open(base_dir)
    adapter = LoraAdapter.open(adapter_dir)
    plan = plan_merge(base, adapter, options.dtype, options.base_nf4)
    side_files = find_side_files(base_dir, adapter_dir, base.config)
    check_space(out, sum(output.nbytes for output in plan.outputs))
    if options.base_nf4:
        load_bitsandbytes()
    return PreparedMerge(base, adapter, plan, side_files, out, options)


def merge(prepared: PreparedMerge, on_tensor: Callable[[TensorAction], None] | None = None) -> MergeSummary:
    """Write the merged checkpoint; `on_tensor` is called after each tensor is written."""
    base, plan, options = prepared.base, prepared.plan, prepared.options
    with atomic_output(prepared.out, options.force) as directory:
        writer = ShardedSafetensorsWriter(directory, plan.outputs, options.max_shard_bytes)
        try:
            actions = iter(plan.actions)
            for shard in base.shards:
                with open_shard(shard) as reader:
                    for _ in base.tensors_in(shard):
                        action = next(actions)
                        writer.write(action.output.name, merged_tensor(action, reader))
                        if on_tensor is not None:
                            on_tensor(action)
            shards = writer.finish()
        except BaseException:
            writer.abort()
            raise
        files = write_side_files(prepared.side_files, base.config, options.dtype, directory)
    return MergeSummary(
        out=prepared.out,
        tensors=len(plan.actions),
        merged=plan.count("merged"),
        replaced=plan.count("replaced"),
        nf4=plan.count("nf4"),
        base_shards=len(base.shards),
        base_bytes=base.nbytes,
        shards=len(shards),
        bytes_written=writer.total_bytes,
        files=[shard.name for shard in shards] + ["model.safetensors.index.json", *files],
    )
