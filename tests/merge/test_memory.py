"""The merge holds about one base shard plus the adapter in memory, never the model; an
interrupted merge leaves no OUT.

The base here is MPT-shaped and big enough for the difference to show: d_model 1024, 16 blocks,
8192-token vocabulary, 400 MiB of bfloat16 in eight `.bin` shards of at most 64 MiB (MPT-30B is
the same at 60 GB in seven shards of about 10 GB). The adapter is a rank-16 LoRA on the four
linear layers of every block, with peft's config (written by peft's LoraConfig) and key names;
equality with peft's merge is tests/merge/test_equals_peft.py's job.

Peak memory is the merge process's own peak RSS, Linux's VmHWM read as the real command (`python
-m server merge`, run through runpy) exits, minus the same of a child that only imports what the
merge imports (Python, torch, safetensors, the CLI). Not `wait4`'s ru_maxrss: that also counts
the test process's memory, which the child held between fork and exec.

The bound: the largest base shard (its pages are mapped while its tensors are written) + the
adapter + a margin of three float32 copies of the largest merged tensor (the float32 weight, the
cast result, the allocator's slack) + 64 MiB for the interpreter's own allocations. Loading the
whole model would pass it by more than 200 MiB. Measured here: 155 MiB above the imports, against
a bound of 192 MiB and a model of 400 MiB.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harness.lora_checkpoints import LINEAR_TARGETS, read_checkpoint
from harness.server import REPO_ROOT
from harness.tiny_mpt import TinyMpt, mosaicml_config

SPEC = TinyMpt(d_model=1024, n_heads=8, n_layers=16, vocab_size=8192, dialect="mosaicml")
BLOCKS_PER_SHARD = 2
RANK = 16
MIB = 2**20


def block_tensors(index: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    d, ffn = SPEC.d_model, 4 * SPEC.d_model
    shapes = {
        "norm_1.weight": (d,),
        "attn.Wqkv.weight": (3 * d, d),
        "attn.out_proj.weight": (d, d),
        "norm_2.weight": (d,),
        "ffn.up_proj.weight": (ffn, d),
        "ffn.down_proj.weight": (d, ffn),
    }
    return {
        f"transformer.blocks.{index}.{name}": (0.02 * torch.randn(shape, generator=generator)).to(torch.bfloat16)
        for name, shape in shapes.items()
    }


def write_big_base(directory: Path) -> list[Path]:
    """Shard by shard, so this test process never holds the model either."""
    directory.mkdir()
    generator = torch.Generator().manual_seed(0)
    shard_count = SPEC.n_layers // BLOCKS_PER_SHARD
    weight_map, paths = {}, []
    for number in range(1, shard_count + 1):
        tensors: dict[str, torch.Tensor] = {}
        if number == 1:
            tensors["transformer.wte.weight"] = torch.randn((SPEC.vocab_size, SPEC.d_model), generator=generator).to(
                torch.bfloat16
            )
        for block in range((number - 1) * BLOCKS_PER_SHARD, number * BLOCKS_PER_SHARD):
            tensors.update(block_tensors(block, generator))
        if number == shard_count:
            tensors["transformer.norm_f.weight"] = torch.ones(SPEC.d_model, dtype=torch.bfloat16)
        path = directory / f"pytorch_model-{number:05d}-of-{shard_count:05d}.bin"
        torch.save(tensors, path)
        weight_map.update(dict.fromkeys(tensors, path.name))
        paths.append(path)
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (directory / "config.json").write_text(json.dumps(mosaicml_config(SPEC)))
    return paths


def write_adapter(directory: Path) -> int:
    from peft import LoraConfig
    from safetensors.torch import save_file

    LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=LINEAR_TARGETS, task_type="CAUSAL_LM").save_pretrained(
        directory
    )
    generator = torch.Generator().manual_seed(1)
    d, ffn = SPEC.d_model, 4 * SPEC.d_model
    shapes = {"attn.Wqkv": (3 * d, d), "attn.out_proj": (d, d), "ffn.up_proj": (ffn, d), "ffn.down_proj": (d, ffn)}
    tensors = {}
    for block in range(SPEC.n_layers):
        for module, (out_features, in_features) in shapes.items():
            key = f"base_model.model.transformer.blocks.{block}.{module}"
            tensors[f"{key}.lora_A.weight"] = torch.randn((RANK, in_features), generator=generator) / in_features**0.5
            tensors[f"{key}.lora_B.weight"] = 0.01 * torch.randn((out_features, RANK), generator=generator)
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    return sum(tensor.nbytes for tensor in tensors.values())


@pytest.fixture(scope="module")
def big(tmp_path_factory, neox_tokenizer_file):
    root = tmp_path_factory.mktemp("big")
    shards = write_big_base(root / "base")
    (root / "base" / "tokenizer.json").write_bytes(neox_tokenizer_file.read_bytes())
    adapter_bytes = write_adapter(root / "adapter")
    return root, shards, adapter_bytes


# Runs `code`, then writes the process's peak RSS (kB) as the last line of stderr, however it exits.
MEASURED = """
import re, sys
try:
    {code}
finally:
    status = open("/proc/self/status").read()
    print("VmHWM", re.search(r"VmHWM:\\s+(\\d+) kB", status)[1], file=sys.stderr)
"""
IMPORTS_ONLY = "import torch, safetensors.torch, tqdm, server.cli, server.merge.merge"
COMMAND = "import runpy; sys.argv[0] = 'airoboros-server'; runpy.run_module('server', run_name='__main__')"


def peak_rss(code: str, *args: str) -> tuple[int, int, str, str]:
    """(peak RSS in bytes, exit code, stdout, stderr) of a child Python running `code` with `args`."""
    result = subprocess.run(
        [sys.executable, "-c", MEASURED.format(code=code), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    *stderr, last = result.stderr.strip().splitlines()
    assert last.startswith("VmHWM "), result.stderr
    return int(last.split()[1]) * 1024, result.returncode, result.stdout, "\n".join(stderr)


def test_peak_memory_is_one_shard_plus_the_adapter_not_the_model(big, tmp_path, record_property):
    root, shards, adapter_bytes = big
    largest_shard = max(path.stat().st_size for path in shards)
    model_bytes = sum(path.stat().st_size for path in shards)
    largest_merged_tensor = 4 * SPEC.d_model * SPEC.d_model * 4  # up_proj / down_proj in float32
    margin = 3 * largest_merged_tensor + 64 * MIB
    bound = largest_shard + adapter_bytes + margin
    assert model_bytes > bound + 200 * MIB  # so that loading the whole model cannot pass

    baseline, code, _, stderr = peak_rss(IMPORTS_ONLY)
    assert code == 0, stderr
    peak, code, stdout, stderr = peak_rss(
        COMMAND, "merge", str(root / "base"), str(root / "adapter"), str(tmp_path / "out")
    )
    assert code == 0, stderr
    used = peak - baseline
    for name, value in {
        "model": model_bytes,
        "largest_shard": largest_shard,
        "adapter": adapter_bytes,
        "baseline_rss": baseline,
        "peak_rss": peak,
        "merge_rss": used,
        "bound": bound,
    }.items():
        record_property(f"{name}_mib", round(value / MIB, 1))
    print(
        f"model {model_bytes / MIB:.0f} MiB in {len(shards)} shards (largest {largest_shard / MIB:.0f} MiB), "
        f"adapter {adapter_bytes / MIB:.1f} MiB: merge peak RSS {peak / MIB:.0f} MiB, of which "
        f"{used / MIB:.0f} MiB above the {baseline / MIB:.0f} MiB of Python + torch (bound {bound / MIB:.0f} MiB)"
    )
    assert used <= bound
    reported = float(re.search(r"peak memory ([\d.]+) MB", stdout)[1]) * 10**6  # the summary's own figure
    assert abs(reported - peak) < 0.01 * peak, stdout
    merged = read_checkpoint(tmp_path / "out")
    assert (
        len(merged) == 2 + 6 * SPEC.n_layers
        and merged["transformer.blocks.15.ffn.down_proj.weight"].dtype == torch.bfloat16
    )


def partial_directories(parent: Path) -> list[Path]:
    return list(parent.glob(".out.partial-*"))


# The real command, held after it wrote its first tensor into the partial directory until a
# signal ends the hold, so that the signal always lands mid-merge: a merge left to run can finish
# before the signal does on a stalled machine. The hold is announced by a marker file; SIGTERM's
# handler (the merge's own) and SIGINT's (Python's) raise out of the sleep as they would out of
# the merge's own work.
# SIGINT is put back to Python's handler first, as in a terminal where Ctrl-C reaches the merge:
# a test run started in the background (a shell's `&`, some CI runners) hands its children
# SIGINT ignored, and Python keeps an inherited SIG_IGN, so the merge never sees the signal and
# runs to its end (exit code 0).
HELD_MERGE = """
import os, runpy, signal, sys, time
from pathlib import Path
from server.merge.safetensors_writer import ShardedSafetensorsWriter

signal.signal(signal.SIGINT, signal.default_int_handler)

write = ShardedSafetensorsWriter.write

def write_then_hold(self, name, tensor):
    write(self, name, tensor)
    ShardedSafetensorsWriter.write = write  # hold once
    self._file.flush()
    Path(os.environ["MERGE_HELD_MARKER"]).touch()
    time.sleep({hold_s})
    raise SystemExit("held merge: no signal came in {hold_s} s")

ShardedSafetensorsWriter.write = write_then_hold
sys.argv[0] = "airoboros-server"
runpy.run_module("server", run_name="__main__")
"""
# Start-up (Python, torch, the merge's plan) until the hold, and the hold itself: each wait ends
# as soon as its event comes; the bounds allow for a CI machine that stalls for tens of seconds.
HELD_START_S = 300
HOLD_S = 600


def start_held_merge(root: Path, tmp_path: Path, **pipes) -> subprocess.Popen:
    """The merge of `big` into tmp_path/out, once it is held mid-merge: a tensor written to its
    partial directory, OUT not there."""
    marker = tmp_path.parent / f"{tmp_path.name}.merge-held"
    process = subprocess.Popen(
        [sys.executable, "-c", HELD_MERGE.format(hold_s=HOLD_S), "merge",
         str(root / "base"), str(root / "adapter"), str(tmp_path / "out")],
        cwd=REPO_ROOT, env={**os.environ, "MERGE_HELD_MARKER": str(marker)}, **pipes,
    )
    try:
        deadline = time.monotonic() + HELD_START_S
        while not marker.exists():
            assert process.poll() is None, f"the merge ended (exit code {process.returncode}) before it was held"
            assert time.monotonic() < deadline, f"the merge was not held in {HELD_START_S} s"
            time.sleep(0.02)
        (partial,) = partial_directories(tmp_path)
        assert [path.stat().st_size > 0 for path in partial.iterdir()] == [True]  # the first shard, begun
        assert not (tmp_path / "out").exists()
    except BaseException:
        process.kill()
        process.wait(timeout=60)
        raise
    return process


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_interrupted_merge_leaves_no_output(big, tmp_path, signal_number):
    root, _, _ = big
    process = start_held_merge(root, tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        process.send_signal(signal_number)
        # The merge stops at once, removing its partial directory: the bound allows for CI's stalls.
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()  # if it is still running (no-op once it has exited)
        process.wait(timeout=60)
    assert process.returncode != 0
    assert stderr.strip().splitlines()[-1] == "airoboros-server merge: interrupted; nothing was written"
    assert "Traceback" not in stderr
    assert not (tmp_path / "out").exists() and not partial_directories(tmp_path)


def test_a_killed_merge_leaves_no_out_only_its_hidden_partial_directory(big, tmp_path):
    root, _, _ = big
    process = start_held_merge(root, tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    process.kill()
    process.wait(timeout=60)  # SIGKILL: at once; the bound allows for CI's stalls
    assert not (tmp_path / "out").exists()
    assert [p.name.startswith(".out.partial-") for p in tmp_path.iterdir()] == [True]
