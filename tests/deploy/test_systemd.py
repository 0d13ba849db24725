"""deploy/systemd/: the unit for single-host installs, checked offline.

`systemd-analyze verify` (systemd's own parser; nothing is started) must accept the unit without
a word, with only ExecStart's program swapped for a stand-in (verify insists the program exists).
The unit must then say what deploy/README.md promises: SIGTERM to the server alone and SIGKILL at
a stop timeout longer than the drain, the flush and the engine's shutdown together; a restart on
failure; the settings from the environment file; the hardening; the NVIDIA devices. The example
environment file names only real settings, with values the server accepts.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from server.ops.lifecycle import ENGINE_SHUTDOWN_TIMEOUT_S
from server.ops.runner import FLUSH_GRACE_S
from server.settings import Settings
from harness.server import REPO_ROOT

SYSTEMD_DIR = REPO_ROOT / "deploy" / "systemd"
UNIT = SYSTEMD_DIR / "airoboros-server.service"
ENV_FILE = SYSTEMD_DIR / "airoboros-server.env"
INSTALLED_ENV_FILE = "/etc/airoboros-server/airoboros-server.env"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections → key → every value given (keys such as DeviceAllow repeat)."""
    sections: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        assert key and _, f"not a key=value line: {line!r}"
        sections[section][key.strip()].append(value.strip())
    return sections


def parse_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def _one(service: dict[str, list[str]], key: str) -> str:
    assert len(service[key]) == 1, (key, service[key])
    return service[key][0]


def test_systemd_analyze_verify_accepts_the_unit_without_a_warning(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail(
            "systemd-analyze is missing: run `make deploy-tools` as root (installs Debian's systemd "
            "package; nothing is started) or `sudo apt-get install systemd`",
            pytrace=False,
        )
    program = _one(parse_unit(UNIT.read_text())["Service"], "ExecStart").split()[0]
    stand_in = tmp_path / "airoboros-server"
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(program, str(stand_in)))
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=120
    )
    # verify only warns (exit 0) about a value it cannot parse: any output is a failure.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_the_unit_stops_the_server_alone_and_outwaits_its_drain():
    service = parse_unit(UNIT.read_text())["Service"]
    assert _one(service, "KillMode") == "mixed"
    assert _one(service, "KillSignal") == "SIGTERM"
    drain = float(parse_env_file(ENV_FILE).get("AIROBOROS_DRAIN_TIMEOUT", Settings().drain_timeout))
    needed = drain + FLUSH_GRACE_S + ENGINE_SHUTDOWN_TIMEOUT_S
    assert float(_one(service, "TimeoutStopSec")) > needed, needed
    assert _one(service, "Restart") == "on-failure"
    assert _one(service, "ExecStart").endswith("airoboros-server serve")


def test_the_unit_reads_its_settings_from_the_environment_file_and_keeps_the_cache_writable():
    service = parse_unit(UNIT.read_text())["Service"]
    assert _one(service, "EnvironmentFile") == INSTALLED_ENV_FILE
    environment = dict(value.split("=", 1) for value in service["Environment"])
    # ProtectSystem=strict leaves only systemd's own directories writable: the cache is one.
    assert _one(service, "CacheDirectory") == "airoboros-server"
    assert environment["AIROBOROS_CACHE_DIR"] == "/var/cache/airoboros-server"
    assert environment["HOME"] == f"/var/lib/{_one(service, 'StateDirectory')}"


def test_the_unit_is_hardened_and_reaches_the_gpu():
    service = parse_unit(UNIT.read_text())["Service"]
    assert _one(service, "NoNewPrivileges") == "yes"
    assert _one(service, "ProtectSystem") == "strict"
    assert _one(service, "PrivateTmp") == "yes"
    assert _one(service, "ProtectHome") == "yes"
    assert _one(service, "CapabilityBoundingSet") == ""
    assert _one(service, "User") != "root"
    # The GPU: a closed device list naming the NVIDIA nodes, never PrivateDevices (hides them).
    assert _one(service, "DevicePolicy") == "closed"
    devices = {value.split()[0] for value in service["DeviceAllow"]}
    assert {"/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia-uvm"} <= devices
    assert "PrivateDevices" not in service
    assert int(_one(service, "LimitNOFILE")) > Settings().max_connections


def test_the_example_environment_file_names_only_real_settings_with_valid_values(tmp_path):
    values = parse_env_file(ENV_FILE)
    known = {f"AIROBOROS_{name.upper()}" for name in Settings.model_fields}
    assert set(values) <= known, set(values) - known
    env_file = tmp_path / "airoboros-server.env"
    env_file.write_text(ENV_FILE.read_text())
    settings = Settings(_env_file=env_file)
    assert settings.drain_timeout == float(values["AIROBOROS_DRAIN_TIMEOUT"])
    assert str(settings.model) == values["AIROBOROS_MODEL"]
