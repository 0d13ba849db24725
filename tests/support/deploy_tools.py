"""The offline deploy checks: find the tools `make deploy-tools` installed, render the overlays.

The linters live in their own virtual environment (.venv-deploy: checkov's dependencies fight
vLLM's pins), so the tests run them as programs, never import them. A missing tool fails the
test with the command that installs it; nothing here downloads anything.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterable

import pytest
import yaml

from harness.server import REPO_ROOT

DEPLOY_DIR = REPO_ROOT / "deploy"
DEPLOY_VENV = Path(os.environ.get("AIROBOROS_DEPLOY_VENV", REPO_ROOT / ".venv-deploy"))
DOCKERFILE = REPO_ROOT / "Dockerfile"
HADOLINT_CONFIG = REPO_ROOT / ".hadolint.yaml"
YAMLLINT_CONFIG = DEPLOY_DIR / "checks" / "yamllint.yaml"
CHECKOV_SKIPS = DEPLOY_DIR / "checks" / "checkov-skips.yaml"

# What `kubectl apply -k` is run on: the three serving overlays and the weights volume.
SERVING_OVERLAYS = ("gpu-tp2", "gpu-1", "cpu")
GPU_OVERLAYS = ("gpu-tp2", "gpu-1")
KUSTOMIZATIONS = (*SERVING_OVERLAYS, "weights")
OPTIONAL_COMPONENTS = ("service-monitor", "keda-autoscaling", "inference-gateway")
# The Kubernetes minor versions the manifests are validated against (kubernetes-validate
# bundles their schemas). 1.29 is the oldest whose PodDisruptionBudget has
# unhealthyPodEvictionPolicy; 1.37 the newest kubernetes-validate 1.37.0 knows.
KUBERNETES_VERSIONS = tuple(f"1.{minor}.0" for minor in range(29, 38))

INSTALL_HINT = "run `make deploy-tools` (installs deploy/requirements-checks.txt into .venv-deploy)"


def venv_tool(name: str) -> list[str]:
    """The command that runs the deploy venv's `name`. A Python script is run by the venv's
    interpreter: a script installed verbatim (checkov's) keeps a `#!/path/python` line that the
    kernel cannot run when the checkout's path has a space in it."""
    path = DEPLOY_VENV / "bin" / name
    if not path.exists():
        pytest.fail(f"{path} is missing: {INSTALL_HINT}", pytrace=False)
    with open(path, "rb") as script:
        first_line = script.readline()
    if first_line.startswith(b"#!") and b"python" in first_line:
        return [str(DEPLOY_VENV / "bin" / "python"), str(path)]
    return [str(path)]


def _kustomize_major(kubectl: str) -> int:
    try:
        out = subprocess.run(
            [kubectl, "version", "--client"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    match = re.search(r"Kustomize Version: v(\d+)", out)
    return int(match.group(1)) if match else 0


@functools.cache
def kubectl() -> str:
    """$KUBECTL, else the pinned wheel's kubectl in .venv-deploy, else the machine's own."""
    candidates = [
        os.environ.get("KUBECTL"),
        str(DEPLOY_VENV / "bin" / "kubectl"),
        shutil.which("kubectl"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).exists() and _kustomize_major(candidate) >= 5:
            return candidate
    pytest.fail(f"no kubectl with kustomize v5 or later: {INSTALL_HINT}", pytrace=False)


def run(command: Iterable[str | Path], timeout: float = 300, **kwargs: Any) -> subprocess.CompletedProcess:
    command = [str(part) for part in command]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT, **kwargs
    )


def check(command: Iterable[str | Path], timeout: float = 300, **kwargs: Any) -> str:
    """Run a checker; fail the test with its output when it exits non-zero."""
    result = run(command, timeout=timeout, **kwargs)
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, command))} exited {result.returncode}:\n"
            f"{result.stdout[-8000:]}\n{result.stderr[-4000:]}",
            pytrace=False,
        )
    return result.stdout


@functools.cache
def render(kustomization: str) -> str:
    """`kubectl kustomize deploy/<kustomization>` as YAML text."""
    return check([kubectl(), "kustomize", DEPLOY_DIR / kustomization])


def render_with_components(overlay: str, components: Iterable[str], workdir: Path) -> str:
    """An overlay with optional components switched on, as a user would add them."""
    workdir.mkdir(parents=True, exist_ok=True)
    relative = Path(os.path.relpath(DEPLOY_DIR, workdir))
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": "airoboros",
        "resources": [str(relative / overlay)],
        "components": [str(relative / "components" / name) for name in components],
    }
    (workdir / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return check([kubectl(), "kustomize", workdir])


def documents(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def only(docs: list[dict], kind: str) -> dict:
    found = [doc for doc in docs if doc.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def server_container(deployment: dict) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "server")


def quantity_bytes(quantity: str) -> float:
    """A Kubernetes memory quantity (16Gi, 500M, 1024) in bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(quantity))
    assert match, f"not a quantity: {quantity}"
    number, unit = match.groups()
    return float(number) * units.get(unit, 1)


def checkov_skips() -> list[dict]:
    return yaml.safe_load(CHECKOV_SKIPS.read_text())["skips"]


# --- the Dockerfile, read without Docker -------------------------------------------------------


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            logical.append(current)
            current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Each stage's instructions, by stage name; the last stage is the default target."""
    result: dict[str, list[tuple[str, str]]] = {}
    name = None
    for instruction, args in dockerfile_instructions():
        if instruction == "FROM":
            name = args.split()[-1] if " AS " in args.upper() else args
            result[name] = []
        result[name].append((instruction, args))
    return result


def dockerfile_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in stage:
        if instruction == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", args)))
    return env


def dockerfile_last(stage: list[tuple[str, str]], instruction: str) -> str:
    return [args for name, args in stage if name == instruction][-1]
