"""The offline checks of deploy.md on every kustomization: kustomize renders it, the Kubernetes
schemas accept it (strict), yamllint and checkov pass. Tools: `make deploy-tools`."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tests.support.deploy_tools import (
    DEPLOY_DIR,
    GPU_OVERLAYS,
    HADOLINT_CONFIG,
    KUBERNETES_VERSIONS,
    KUSTOMIZATIONS,
    OPTIONAL_COMPONENTS,
    YAMLLINT_CONFIG,
    check,
    checkov_skips,
    documents,
    render,
    render_with_components,
    run,
    venv_tool,
)

WITH_COMPONENTS = [f"{overlay}+optional" for overlay in GPU_OVERLAYS]


def rendered(name: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    if name.endswith("+optional"):
        overlay = name.removesuffix("+optional")
        return render_with_components(
            overlay, OPTIONAL_COMPONENTS, tmp_path_factory.mktemp(f"{overlay}-optional")
        )
    return render(name)


@pytest.fixture
def rendered_file(request: pytest.FixtureRequest, tmp_path: Path, tmp_path_factory) -> Path:
    path = tmp_path / "rendered.yaml"
    path.write_text(rendered(request.param, tmp_path_factory))
    return path


@pytest.mark.parametrize("name", [*KUSTOMIZATIONS, *WITH_COMPONENTS])
def test_kustomization_renders(name: str, tmp_path_factory) -> None:
    docs = documents(rendered(name, tmp_path_factory))
    assert docs, f"deploy/{name} rendered nothing"
    assert all(doc["metadata"].get("namespace") == "airoboros" for doc in docs)


@pytest.mark.parametrize("rendered_file", [*KUSTOMIZATIONS, *WITH_COMPONENTS], indirect=True)
def test_manifests_validate_strictly_against_kubernetes(rendered_file: Path) -> None:
    # Custom resources (ScaledObject, ServiceMonitor) have no bundled schema: a warning, not a
    # failure; tests/deploy/test_manifests.py checks their fields instead.
    versions = [arg for version in KUBERNETES_VERSIONS for arg in ("-k", version)]
    out = check([*venv_tool("kubernetes-validate"), "--strict", *versions, rendered_file])
    for version in KUBERNETES_VERSIONS:
        minor = version.rsplit(".", 1)[0]
        assert f"against version {minor}" in out, f"{rendered_file.name} not validated for {minor}"


PRIVILEGED_POD = (
    "apiVersion: v1\nkind: Pod\nmetadata: {name: bad, namespace: airoboros}\n"
    "spec:\n  containers:\n    - name: c\n      image: busybox:1.37.0\n"
    "      securityContext: {privileged: true}\n"
)


@pytest.fixture(scope="module")
def checkov_results(tmp_path_factory) -> dict[str, dict[str, list[str]]]:
    """One checkov run (its start-up is most of its cost) over every rendered kustomization and a
    privileged pod it must fail: file name → the ids of its passed and failed checks."""
    directory = tmp_path_factory.mktemp("checkov")
    for name in [*KUSTOMIZATIONS, *WITH_COMPONENTS]:
        (directory / f"{name}.yaml").write_text(rendered(name, tmp_path_factory))
    (directory / "privileged-pod.yaml").write_text(PRIVILEGED_POD)
    skip_ids = ",".join(skip["id"] for skip in checkov_skips())
    command = [
        *venv_tool("checkov"), "--skip-download", "--framework", "kubernetes", "--directory", directory,
        "--skip-check", skip_ids, "--output", "json",
    ]
    # Offline: no update check against the package index (it would cost a timeout).
    result = run(command, env={**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true"})
    # Exit 1: the privileged pod fails, as it must; anything else is checkov's own trouble.
    assert result.returncode in (0, 1), result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["summary"]["parsing_errors"] == 0, report["summary"]
    files: dict[str, dict[str, list[str]]] = {}
    for outcome in ("passed", "failed"):
        for found in report["results"][f"{outcome}_checks"]:
            entry = files.setdefault(Path(found["file_path"]).name, {"passed": [], "failed": []})
            entry[outcome].append(found["check_id"])
    return files


@pytest.mark.parametrize("name", [*KUSTOMIZATIONS, *WITH_COMPONENTS])
def test_checkov_passes(name: str, checkov_results) -> None:
    results = checkov_results.get(f"{name}.yaml")
    # A file checkov could not read would "pass" with no checks at all.
    assert results and len(results["passed"]) >= 20, results
    assert results["failed"] == [], results["failed"]


def test_checkov_fails_a_privileged_pod(checkov_results) -> None:
    assert "CKV_K8S_16" in checkov_results["privileged-pod.yaml"]["failed"]


def test_kubernetes_validate_rejects_an_unknown_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(render("cpu").replace("maxSurge: 1", "maxSurge: 1\n      maxSurgeTypo: 1", 1))
    result = run([*venv_tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSIONS[-1], bad])
    assert result.returncode != 0 and "maxSurgeTypo" in result.stdout + result.stderr


def test_hadolint_fails_a_careless_dockerfile(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install -y curl\n")
    result = run([*venv_tool("hadolint"), "--config", HADOLINT_CONFIG, dockerfile])
    assert result.returncode != 0 and "DL3007" in result.stdout


@pytest.mark.parametrize(
    "path",
    sorted(
        {p.parent for p in DEPLOY_DIR.rglob("*.yaml")} - {DEPLOY_DIR / "checks"}
    )
    + [DEPLOY_DIR / "checks", HADOLINT_CONFIG],
    ids=lambda p: str(p.relative_to(DEPLOY_DIR.parent)),
)
def test_yamllint_passes(path: Path) -> None:
    check([*venv_tool("yamllint"), "--strict", "-c", YAMLLINT_CONFIG, path])


def test_every_checkov_skip_gives_a_reason() -> None:
    for skip in checkov_skips():
        assert re.fullmatch(r"CKV2?_K8S_\d+", skip["id"]), skip
        assert len(skip.get("reason", "").split()) >= 8, f"{skip['id']} needs a real reason"


def test_every_per_resource_checkov_skip_gives_a_reason() -> None:
    found = 0
    for name in KUSTOMIZATIONS:
        for doc in documents(render(name)):
            for key, value in (doc["metadata"].get("annotations") or {}).items():
                if key.startswith("checkov.io/skip"):
                    found += 1
                    check_id, _, reason = value.partition("=")
                    assert re.fullmatch(r"CKV2?_K8S_\d+", check_id), value
                    assert len(reason.split()) >= 6, f"{name}: {check_id} needs a real reason"
    assert found, "expected the per-resource skips (GPU readOnlyRootFilesystem, loader probes)"


def test_the_gpu_readonly_root_skip_covers_gpu_pods_only() -> None:
    def skips(name: str) -> str:
        deployment = next(d for d in documents(render(name)) if d["kind"] == "Deployment")
        return " ".join((deployment["metadata"].get("annotations") or {}).values())

    assert "CKV_K8S_22" in skips("gpu-tp2") and "CKV_K8S_22" in skips("gpu-1")
    assert "CKV_K8S_22" not in skips("cpu"), "the cpu overlay runs with a read-only root"
