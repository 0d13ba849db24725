"""Output shards in the safetensors format, streamed to disk one tensor at a time.

safetensors' own `save_file` serialises a whole dict of tensors held in memory; for a merge that
would hold a whole output shard (5 GB by default) on top of the base shard being read. The format
is simple and documented (an 8-byte little-endian header length, a JSON header giving each
tensor's dtype, shape and byte range, then the raw little-endian bytes with no gaps), and every
tensor's shape and dtype is known before the merge starts, so each shard's header is written
first and each tensor's bytes follow as soon as it is merged. Files are read back with
safetensors' own `safe_open` in the tests, and by transformers and vLLM.

Shards are filled in the order the tensors come, a new one started when the next tensor would
pass `max_shard_bytes` (a tensor larger than that gets a shard of its own), and named and indexed
as transformers names them: `model-00001-of-00003.safetensors` and `model.safetensors.index.json`.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_NAMES_BY_DTYPE = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}
INDEX_NAME = "model.safetensors.index.json"
_HEADER_ALIGNMENT = 8  # safetensors pads its header so that the data starts 8-byte aligned


@dataclass(frozen=True)
class OutputTensor:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * self.dtype.itemsize


def plan_shards(tensors: Sequence[OutputTensor], max_shard_bytes: int) -> list[list[OutputTensor]]:
    """Consecutive groups of `tensors`, each at most `max_shard_bytes` unless one tensor is larger."""
    shards: list[list[OutputTensor]] = []
    current: list[OutputTensor] = []
    current_bytes = 0
    for tensor in tensors:
        if current and current_bytes + tensor.nbytes > max_shard_bytes:
            shards.append(current)
            current, current_bytes = [], 0
        current.append(tensor)
        current_bytes += tensor.nbytes
    if current:
        shards.append(current)
    return shards


def shard_file_name(number: int, count: int) -> str:
    return f"model-{number:05d}-of-{count:05d}.safetensors"


def _header(tensors: Sequence[OutputTensor]) -> bytes:
    entries: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for tensor in tensors:
        entries[tensor.name] = {
            "dtype": _NAMES_BY_DTYPE[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + tensor.nbytes],
        }
        offset += tensor.nbytes
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-(len(header) + 8) % _HEADER_ALIGNMENT)
    return struct.pack("<Q", len(header)) + header


class ShardedSafetensorsWriter:
    """Writes the planned tensors, in plan order, into `directory`; `finish` writes the index."""

    def __init__(self, directory: Path, tensors: Sequence[OutputTensor], max_shard_bytes: int) -> None:
        for tensor in tensors:
            if tensor.dtype not in _NAMES_BY_DTYPE:
                raise ValueError(f"{tensor.name}: dtype {tensor.dtype} has no safetensors name")
        self.directory = directory
        self.shards = plan_shards(tensors, max_shard_bytes)
        self.total_bytes = sum(tensor.nbytes for tensor in tensors)
        self._pending = [(shard_index, tensor) for shard_index, shard in enumerate(self.shards) for tensor in shard]
        self._position = 0
        self._file: BinaryIO | None = None
        self._file_shard = -1

    def _shard_path(self, shard_index: int) -> Path:
        return self.directory / shard_file_name(shard_index + 1, len(self.shards))

    def write(self, name: str, tensor: torch.Tensor) -> None:
        shard_index, expected = self._pending[self._position]
        if name != expected.name or tuple(tensor.shape) != expected.shape or tensor.dtype != expected.dtype:
            raise ValueError(
                f"writer expected {expected.name} {list(expected.shape)} {expected.dtype}, "
                f"got {name} {list(tensor.shape)} {tensor.dtype}"
            )
        if shard_index != self._file_shard:
            self._close_file()
            self._file = open(self._shard_path(shard_index), "wb")
            self._file_shard = shard_index
            self._file.write(_header(self.shards[shard_index]))
        assert self._file is not None
        # A byte view of the contiguous tensor: written without another copy.
        data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy()
        self._file.write(memoryview(data))
        self._position += 1

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def finish(self) -> list[Path]:
        """Close the last shard and write the index; return the shard paths."""
        if self._position != len(self._pending):
            missing = self._pending[self._position][1].name
            raise ValueError(f"writer finished before {missing} was written")
        self._close_file()
        weight_map = {
            tensor.name: self._shard_path(shard_index).name
            for shard_index, shard in enumerate(self.shards)
            for tensor in shard
        }
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.directory / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        return [self._shard_path(shard_index) for shard_index in range(len(self.shards))]

    def abort(self) -> None:
        """Close an open file after a failure (the caller removes the directory)."""
        if self._file is not None:
            self._file.close()
            self._file = None
