"""The base checkpoint as it is published, read one shard at a time.

Layouts, in the order they are looked for (the first present wins):
`model.safetensors.index.json`, `model.safetensors`, `pytorch_model.bin.index.json`,
`pytorch_model.bin`, and shards without an index (`model-00001-of-00003.safetensors`,
`pytorch_model-00001-of-00007.bin`: MosaicML's MPT-30B ships seven `.bin` shards of about 10 GB).

`.bin` shards are opened with `torch.load(mmap=True, weights_only=True)`: the file is mapped,
not read, so a tensor's bytes are paged in only when the merge touches them, and nothing but
tensors can be unpickled. safetensors shards are opened with `safe_open`, one tensor at a time.
Listing a checkpoint reads only shapes and dtypes.

Both MPT config dialects (MosaicML's remote-code `MPTForCausalLM` and transformers'
`MptForCausalLM`) carry `model_type: "mpt"` and the same weight names; config.json is not
interpreted beyond that and the checks below.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from server.merge.errors import MergeError
from server.merge.safetensors_writer import SAFETENSORS_DTYPES

MPT_ARCHITECTURES = ("MPTForCausalLM", "MptForCausalLM")
# (index, single file, numbered shard) for each format, safetensors first.
_LAYOUTS = (
    ("model.safetensors.index.json", "model.safetensors", "model-{:05d}-of-{:05d}.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin", "pytorch_model-{:05d}-of-{:05d}.bin"),
)
# Tensors that only quantized checkpoints hold: bitsandbytes 4-bit (absmax, quant_map, packed
# quant_state), bitsandbytes 8-bit (SCB, weight_format), GPTQ/AWQ (qweight, qzeros, scales, g_idx).
_QUANTIZATION_TENSOR = re.compile(
    r"\.(absmax|quant_map|nested_absmax|nested_quant_map|quant_state\.bitsandbytes__\w+|SCB|weight_format"
    r"|qweight|qzeros|scales|g_idx)$"
)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    shard: Path


class ShardReader(Protocol):
    def names(self) -> list[str]: ...

    def describe(self, name: str) -> tuple[tuple[int, ...], torch.dtype]: ...

    def tensor(self, name: str) -> torch.Tensor: ...


class _SafetensorsShard:
    def __init__(self, handle: Any, path: Path) -> None:
        self._handle, self._path = handle, path

    def names(self) -> list[str]:
        return list(self._handle.keys())

    def describe(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        view = self._handle.get_slice(name)
        dtype_name = view.get_dtype()
        if dtype_name not in SAFETENSORS_DTYPES:
            raise MergeError(f"{self._path}: tensor {name} has dtype {dtype_name}, which this merge does not read")
        return tuple(view.get_shape()), SAFETENSORS_DTYPES[dtype_name]

    def tensor(self, name: str) -> torch.Tensor:
        return self._handle.get_tensor(name)


class _BinShard:
    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self._state = state

    def names(self) -> list[str]:
        return list(self._state)

    def describe(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        tensor = self._state[name]
        return tuple(tensor.shape), tensor.dtype

    def tensor(self, name: str) -> torch.Tensor:
        return self._state[name]


def load_bin_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as error:  # a corrupt, truncated or non-tensor pickle: name the file
        raise MergeError(f"cannot read {path}: {str(error).splitlines()[0]}") from None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise MergeError(f"cannot read {path}: it does not hold a dict of tensors (a state dict)")
    return state


@contextlib.contextmanager
def open_shard(path: Path) -> Iterator[ShardReader]:
    """One shard's tensors; a `.bin` stays memory-mapped until the block ends."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            handle = safe_open(str(path), framework="pt", device="cpu")
        except Exception as error:
            raise MergeError(f"cannot read {path}: {str(error).splitlines()[0]}") from None
        with handle:
            yield _SafetensorsShard(handle, path)
    else:
        state = load_bin_state(path)
        try:
            yield _BinShard(state)
        finally:
            state.clear()  # drops the views, so the file's mapping goes with them


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise MergeError(f"{path} is missing ({what})")
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MergeError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise MergeError(f"{path} is not a JSON object")
    return value


def find_shards(directory: Path) -> list[Path]:
    for index_name, single_name, shard_template in _LAYOUTS:
        index_path = directory / index_name
        if index_path.is_file():
            weight_map = read_json(index_path, "the shard index").get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise MergeError(f"{index_path} has no weight_map")
            shards = [directory / name for name in sorted(set(weight_map.values()))]
            for shard in shards:
                if not shard.is_file():
                    raise MergeError(f"{shard} is missing (listed in {index_name})")
            return shards
        if (directory / single_name).is_file():
            return [directory / single_name]
        pattern = re.compile(re.escape(shard_template).replace(r"\{:05d\}", r"(\d+)"))
        numbered = sorted(path for path in directory.iterdir() if pattern.fullmatch(path.name))
        if numbered:
            count = int(pattern.fullmatch(numbered[0].name).group(2))
            expected = [directory / shard_template.format(number, count) for number in range(1, count + 1)]
            for number, shard in enumerate(expected, start=1):
                if not shard.is_file():
                    raise MergeError(f"{shard} is missing (shard {number} of {count}, and no index)")
            return expected
    raise MergeError(
        f"no weights in {directory}: expected model.safetensors, pytorch_model.bin, "
        "their .index.json, or numbered shards"
    )


def _quantization_description(quantization: dict[str, Any]) -> str:
    method = quantization.get("quant_method", "unknown method")
    if quantization.get("load_in_4bit"):
        return f"{method} 4-bit"
    if quantization.get("load_in_8bit"):
        return f"{method} 8-bit"
    if quantization.get("bits"):
        return f"{method} {quantization['bits']}-bit"
    return str(method)


def _refuse_quantized(directory: Path, what: str) -> MergeError:
    return MergeError(
        f"base {directory} is quantized ({what}): merge into the 16-bit base the adapter was trained "
        "on (QLoRA trains against a 4-bit copy, but the merge belongs in the original weights)"
    )


@dataclass
class BaseCheckpoint:
    directory: Path
    config: dict[str, Any]
    shards: list[Path]
    tensors: dict[str, TensorInfo]  # in the order the shards store them

    @classmethod
    def open(cls, directory: Path) -> BaseCheckpoint:
        if not directory.is_dir():
            raise MergeError(f"base directory {directory} does not exist")
        config = read_json(directory / "config.json", "the base's config")
        if config.get("model_type") != "mpt":
            raise MergeError(
                f"base {directory} is not an MPT checkpoint (config.json model_type "
                f"{config.get('model_type')!r}); this merge handles MPT ({' or '.join(MPT_ARCHITECTURES)})"
            )
        architectures = config.get("architectures") or []
        if any(name not in MPT_ARCHITECTURES for name in architectures):
            raise MergeError(f"base {directory} has architectures {architectures}; expected {MPT_ARCHITECTURES[0]}")
        if config.get("quantization_config"):
            raise _refuse_quantized(
                directory,
                f"config.json quantization_config: {_quantization_description(config['quantization_config'])}",
            )
        tensors: dict[str, TensorInfo] = {}
        shards = find_shards(directory)
        for shard in shards:
            with open_shard(shard) as reader:
                for name in reader.names():
                    if name in tensors:
                        raise MergeError(f"tensor {name} is in both {tensors[name].shard.name} and {shard.name}")
                    shape, dtype = reader.describe(name)
                    tensors[name] = TensorInfo(name, shape, dtype, shard)
        for info in tensors.values():
            if _QUANTIZATION_TENSOR.search(info.name):
                raise _refuse_quantized(directory, f"it holds {info.name}")
            if info.name.endswith(".weight") and not info.dtype.is_floating_point:
                raise _refuse_quantized(directory, f"{info.name} is {str(info.dtype).removeprefix('torch.')}")
        return cls(directory, config, shards, tensors)

    def tensors_in(self, shard: Path) -> list[TensorInfo]:
        return [info for info in self.tensors.values() if info.shard == shard]

    @property
    def nbytes(self) -> int:
        return sum(info.dtype.itemsize * _numel(info.shape) for info in self.tensors.values())


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count
