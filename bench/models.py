"""The checkpoints the benchmark serves: the embedded default model and a tiny MPT.

The default model is converted by our own CLI (`airoboros-server prepare-default-model` prints
its directory), so `vllm serve` loads exactly the weights our server does. The tiny MPT comes
from the test helper `harness/tiny_mpt.py` (random weights, MPT-30B's head size and
vocabulary) when it is there, else from transformers' MptConfig directly; its tokenizer is the
GPT-NeoX one from ../shared/data, never copied into the repository.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from server.engine.default_model import SERVED_NAME as DEFAULT_SERVED_NAME  # noqa: F401 - bench names it here
from harness.server import REPO_ROOT

SHARED_DIR = Path(os.environ.get("AIROBOROS_SHARED_DIR", REPO_ROOT.parent / "shared"))
NEOX_TOKENIZER = Path(
    os.environ.get("AIROBOROS_NEOX_TOKENIZER", SHARED_DIR / "data" / "gpt-neox-20b-tokenizer.json")
)
TINY_MPT_NAME = "tiny-mpt"


def default_model_dir() -> Path:
    """Convert (once) and locate the embedded default model, through our CLI."""
    result = subprocess.run(
        [sys.executable, "-m", "server", "prepare-default-model"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)},
    )
    if result.returncode != 0:
        raise RuntimeError(f"prepare-default-model failed:\n{result.stderr[-3000:]}")
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    path = Path(lines[-1])
    if not (path / "config.json").is_file():
        raise RuntimeError(f"prepare-default-model printed {path}, which is not a checkpoint")
    return path


def make_tiny_mpt(directory: Path) -> Path:
    """A tiny random MPT checkpoint (2 layers, d_model 224, head_dim 112) in `directory`."""
    if (directory / "config.json").is_file():
        return directory
    if not NEOX_TOKENIZER.is_file():
        raise FileNotFoundError(f"{NEOX_TOKENIZER} is missing (set AIROBOROS_NEOX_TOKENIZER)")
    sys.path.insert(0, str(REPO_ROOT))
    try:
        from harness.tiny_mpt import make_tiny_mpt as make_with_helper
    except ImportError:
        make_with_helper = None
    if make_with_helper is not None:
        make_with_helper(directory, NEOX_TOKENIZER)
        return directory
    from transformers import MptConfig, MptForCausalLM, PreTrainedTokenizerFast

    config = MptConfig(d_model=224, n_heads=2, n_layers=2, vocab_size=50432, max_seq_len=512)
    MptForCausalLM(config).save_pretrained(directory, safe_serialization=True)
    PreTrainedTokenizerFast(
        tokenizer_file=str(NEOX_TOKENIZER), bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        unk_token="<|endoftext|>", model_max_length=512,
    ).save_pretrained(directory)
    return directory
