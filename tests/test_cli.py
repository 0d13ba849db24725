"""The command line speaks plainly and refuses unsafe or invalid settings before starting anything."""

from __future__ import annotations

import subprocess
import sys

from harness.server import REPO_ROOT


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "server", *args], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=120, env=env,
    )


def test_serve_help_lists_the_contract_flags():
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    for flag in ("--model", "--port", "--max-model-len", "--api-key-file", "--drain-timeout", "--max-inflight"):
        assert flag in result.stdout
    assert "AIROBOROS_MAX_INFLIGHT" in result.stdout


def test_an_empty_api_key_file_is_refused(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# no keys yet\n\n")
    result = run_cli("serve", "--api-key-file", str(keys))
    assert result.returncode != 0
    assert "holds no key" in result.stderr


def test_a_missing_api_key_file_is_refused(tmp_path):
    result = run_cli("serve", "--api-key-file", str(tmp_path / "absent"))
    assert result.returncode != 0
    assert "does not exist" in result.stderr


def test_an_invalid_value_names_the_flag():
    result = run_cli("serve", "--port", "70000")
    assert result.returncode != 0
    assert "--port" in result.stderr and "Traceback" not in result.stderr
