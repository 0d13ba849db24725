"""The container image recipe: hadolint passes, and the Dockerfile says what deploy.md asks.

No Docker engine exists here, so the image is never built; these read the Dockerfile."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

from server.settings import Settings
from tests.support.deploy_tools import (
    DOCKERFILE,
    HADOLINT_CONFIG,
    REPO_ROOT,
    check,
    dockerfile_env,
    dockerfile_instructions,
    dockerfile_last,
    dockerfile_stages,
    venv_tool,
)

SETTING_VARIABLES = {f"AIROBOROS_{name.upper()}" for name in Settings.model_fields}


def test_hadolint_passes() -> None:
    check([*venv_tool("hadolint"), "--config", HADOLINT_CONFIG, DOCKERFILE])


def test_hadolint_config_fails_on_every_finding() -> None:
    text = HADOLINT_CONFIG.read_text()
    assert re.search(r"^failure-threshold: info$", text, re.M)
    assert "ignored" not in text


def test_default_target_is_the_gpu_image_on_vllms_image_of_the_pinned_version() -> None:
    all_stages = dockerfile_stages()
    assert list(all_stages)[-1] == "gpu"
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    (pin,) = pyproject["project"]["optional-dependencies"]["gpu"]
    version = pin.split("==")[1]
    assert all_stages["gpu"][0] == ("FROM", f"vllm/vllm-openai:v{version} AS gpu")
    install = " ".join(args for name, args in all_stages["gpu"] if name == "RUN")
    assert "[gpu]" in install, "the server is installed through its gpu extra"


def test_every_base_image_is_pinned() -> None:
    for instruction, args in dockerfile_instructions():
        if instruction == "FROM":
            image = args.split()[0]
            assert ":" in image and not image.endswith(":latest"), image


@pytest.mark.parametrize("stage", ["gpu", "cpu"])
def test_image_runs_as_uid_1000_offline_bound_to_all_interfaces(stage: str) -> None:
    steps = dockerfile_stages()[stage]
    assert dockerfile_last(steps, "USER") == "1000:1000"
    env = dockerfile_env(steps)
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["AIROBOROS_HOST"] == "0.0.0.0"
    assert env["HF_HOME"].startswith("/var/cache/airoboros")
    assert {name for name in env if name.startswith("AIROBOROS_")} <= SETTING_VARIABLES


def test_gpu_image_serves_the_checkpoint_on_the_models_volume() -> None:
    assert dockerfile_env(dockerfile_stages()["gpu"])["AIROBOROS_MODEL"] == "/models/airoboros-mpt-30b"


def test_cpu_image_serves_the_embedded_default_model() -> None:
    assert "AIROBOROS_MODEL" not in dockerfile_env(dockerfile_stages()["cpu"])


@pytest.mark.parametrize("stage", ["gpu", "cpu"])
def test_entrypoint_and_healthcheck_are_exec_form(stage: str) -> None:
    steps = dockerfile_stages()[stage]
    assert json.loads(dockerfile_last(steps, "ENTRYPOINT")) == ["airoboros-server", "serve"]
    healthcheck = dockerfile_last(steps, "HEALTHCHECK")
    command = json.loads(healthcheck.split("CMD", 1)[1])
    assert command[0].startswith("python")
    assert "/health/live" in command[-1]


def test_build_stage_builds_the_wheel_from_what_it_copies(tmp_path) -> None:
    """The `build` stage, replayed offline: copy what its COPY lines name, build the wheel."""
    context = tmp_path / "src"
    context.mkdir()
    for instruction, args in dockerfile_stages()["build"]:
        if instruction != "COPY":
            continue
        *sources, destination = args.split()
        for source in sources:
            matches = sorted(REPO_ROOT.glob(source))
            assert matches or source.endswith("*"), f"COPY {source}: no such file in the repository"
            for match in matches:
                target = context / (destination.removeprefix("./") if not destination.endswith("/") else match.name)
                if match.is_dir():
                    shutil.copytree(match, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(match, target)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
         "--wheel-dir", str(tmp_path / "wheels"), str(context)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    (wheel,) = (tmp_path / "wheels").glob("airoboros_server-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "server/cli.py" in names and any(name.startswith("prompt_formats/") for name in names)


def test_no_model_weights_enter_the_build_context() -> None:
    lines = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()]
    allowed = [line[1:] for line in lines if line.startswith("!")]
    assert "*" in lines and lines.index("*") < lines.index(f"!{allowed[0]}"), "an allow-list"
    assert set(allowed) <= {"pyproject.toml", "README.md", "LICENSE", "server/", "prompt_formats/"}
    for pattern in ("**/*.safetensors", "**/*.gguf", "**/*.bin"):
        assert pattern in lines
