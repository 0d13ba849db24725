"""The embedded default model is converted reproducibly and without touching the network.

One conversion here, offline, into a fresh directory; the other it must equal byte for byte is
the one the shared default server's start made (or found) in the cache (`--cache-dir`): two
independent conversions by the same converter version, for the price of one.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# Runs the conversion in a fresh interpreter where every outgoing connection raises, so a
# download attempt anywhere in the stack fails the conversion instead of going unnoticed.
NO_NETWORK_CONVERSION = textwrap.dedent(
    """
    import socket, sys

    def refuse(*args, **kwargs):
        raise OSError("network access attempted during default-model preparation")

    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse
    socket.create_connection = refuse
    socket.getaddrinfo = refuse

    from pathlib import Path
    from server.engine.default_model import prepare_default_model
    print(prepare_default_model(Path(sys.argv[1])))
    """
)


def _convert_offline(cache_dir: Path) -> Path:
    # Without HF_HUB_OFFLINE (the server under test has it set), so that the output equal to the
    # server's also shows the conversion does not depend on that setting.
    environment = {name: value for name, value in os.environ.items() if name != "HF_HUB_OFFLINE"}
    result = subprocess.run(
        [sys.executable, "-c", NO_NETWORK_CONVERSION, str(cache_dir)],
        capture_output=True, text=True, timeout=600, env=environment,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(result.stdout.strip().splitlines()[-1])


def _digests(directory: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.iterdir())
        if path.is_file()
    }


@pytest.fixture(scope="module")
def first_conversion(tmp_path_factory) -> Path:
    return _convert_offline(tmp_path_factory.mktemp("first"))


@pytest.mark.engine
def test_conversion_is_reproducible_and_offline(first_conversion, default_server):
    from server.engine.default_model import checkpoint_dir
    from server.settings import Settings

    served = checkpoint_dir(Settings().resolved_cache_dir())  # what the default server loaded
    assert served != first_conversion and (served / "config.json").is_file()
    assert (first_conversion / "model.safetensors").stat().st_size > 200_000_000  # bf16, 135M params
    assert _digests(first_conversion) == _digests(served)
    assert "quantization_config" not in (first_conversion / "config.json").read_text()


def test_second_preparation_reuses_the_cached_checkpoint(first_conversion):
    stamp = (first_conversion / "model.safetensors").stat().st_mtime_ns
    again = _convert_offline(first_conversion.parent)
    assert again == first_conversion
    assert (again / "model.safetensors").stat().st_mtime_ns == stamp
    assert not list(first_conversion.parent.glob(".converting-*"))
