"""The files OUT carries beside the weights: config, tokenizer, generation config, remote code.

- config.json: the base's, in its own dialect (MosaicML's or transformers'), with only the dtype
  field (`torch_dtype`, or `dtype` where transformers 5 wrote that) set to the merged weights'
  dtype, so `--dtype auto` serves them as written.
- The GPT-NeoX tokenizer files and generation_config.json: from the adapter directory when it has
  them (a fine-tune may ship its own), else from the base. A merge without a tokenizer would not
  serve, so it is refused before anything is written.
- MosaicML's remote code (the base's top-level *.py files, which `auto_map` points at), so the
  copy still loads with `trust_remote_code` the way the base did; our server never needs it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from server.merge.errors import MergeError

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
)
GENERATION_CONFIG = "generation_config.json"


@dataclass(frozen=True)
class SideFiles:
    tokenizer_files: list[Path]
    generation_config: Path | None
    remote_code: list[Path]


def _tokenizer_in(directory: Path) -> list[Path]:
    if not (directory / "tokenizer.json").is_file():
        return []
    return [directory / name for name in TOKENIZER_FILES if (directory / name).is_file()]


def find_side_files(base: Path, adapter: Path, config: dict[str, Any]) -> SideFiles:
    tokenizer_files = _tokenizer_in(adapter) or _tokenizer_in(base)
    if not tokenizer_files:
        raise MergeError(
            f"no tokenizer: neither {adapter / 'tokenizer.json'} nor {base / 'tokenizer.json'} exists "
            "(the merged model needs MPT's GPT-NeoX tokenizer beside it to be served)"
        )
    generation = next((d / GENERATION_CONFIG for d in (adapter, base) if (d / GENERATION_CONFIG).is_file()), None)
    remote_code = sorted(base.glob("*.py")) if config.get("auto_map") else []
    return SideFiles(tokenizer_files, generation, remote_code)


def merged_config(config: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    dtype_name = str(dtype).removeprefix("torch.")
    written = {**config}
    keys = [key for key in ("torch_dtype", "dtype") if key in config] or ["torch_dtype"]
    for key in keys:
        written[key] = dtype_name
    return written


def write_side_files(side: SideFiles, config: dict[str, Any], dtype: torch.dtype, directory: Path) -> list[str]:
    """Write them into `directory`; return the names written."""
    (directory / "config.json").write_text(json.dumps(merged_config(config, dtype), indent=2) + "\n")
    written = ["config.json"]
    sources = [*side.tokenizer_files, *side.remote_code]
    if side.generation_config is not None:
        sources.append(side.generation_config)
    for source in sources:
        shutil.copyfile(source, directory / source.name)
        written.append(source.name)
    return written
