"""OUT appears complete or not at all.

Everything is written into a temporary directory beside OUT (same filesystem, so the final step
is a rename) named `.OUT.partial-XXXX`; on any failure or interruption it is removed. Only when
every file is written and synced is it renamed onto OUT. With `--force` an existing OUT is first
renamed aside and deleted after the new one is in place. A merge killed outright (SIGKILL, power
loss) can leave the hidden partial directory behind, never a half-written OUT.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from server.merge.errors import MergeError
from server.merge.sizes import format_bytes


def check_space(out: Path, needed: int) -> None:
    """Refuse to start a merge whose output cannot fit (an existing OUT is freed only at the end)."""
    free = shutil.disk_usage(out.parent).free
    if free < needed:
        raise MergeError(
            f"not enough disk space for {out}: the merged weights need {format_bytes(needed)}, "
            f"{out.parent} has {format_bytes(free)} free"
        )


def check_output(out: Path, force: bool, inputs: dict[str, Path]) -> None:
    """Refuse an OUT that cannot be written, or that --force would destroy an input with."""
    if not out.parent.is_dir():
        raise MergeError(f"cannot write {out}: its parent directory {out.parent} does not exist")
    resolved = out.resolve()
    for label, path in inputs.items():
        path = path.resolve()
        if resolved == path or path.is_relative_to(resolved):
            raise MergeError(f"OUT {out} is or contains the {label} directory {path}; choose another OUT")
    if (out.exists() or out.is_symlink()) and not force:
        raise MergeError(f"{out} already exists: pass --force to replace it")


def _sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _publish(temporary: Path, out: Path, force: bool) -> None:
    if out.exists() or out.is_symlink():
        if not force:
            raise MergeError(f"{out} appeared while merging: pass --force to replace it")
        aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.replaced-", dir=out.parent))
        os.rename(out, aside / out.name)
        os.rename(temporary, out)
        shutil.rmtree(aside)
    else:
        os.rename(temporary, out)
    _sync_directory(out.parent)


@contextlib.contextmanager
def atomic_output(out: Path, force: bool) -> Iterator[Path]:
    """A fresh directory to write into; renamed onto `out` when the block completes."""
    temporary = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        os.chmod(temporary, 0o755)  # mkdtemp makes it private; OUT should read like any checkpoint
        yield temporary
        _publish(temporary, out, force)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
