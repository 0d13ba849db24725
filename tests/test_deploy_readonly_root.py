"""The cpu overlay's `readOnlyRootFilesystem: true` holds: the real server starts, converts the
embedded default model and answers with the root filesystem read-only and only the pod's emptyDir
mount paths writable.

No container runtime exists here, so bubblewrap (Debian's `bubblewrap`) plays the part: the host's
root bound read-only, a tmpfs at each emptyDir mountPath of the rendered cpu Deployment, and the
environment the pod gets (the Dockerfile's `cpu` stage ENV, then the ConfigMap).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

from tests.support.deploy_tools import (
    documents,
    dockerfile_env,
    dockerfile_stages,
    only,
    render,
    server_container,
)
from tests.support.server import REPO_ROOT, RunningServer, free_port, stop_server, wait_until_ready

pytestmark = pytest.mark.engine


def pod_environment(docs: list[dict]) -> dict[str, str]:
    env = dockerfile_env(dockerfile_stages()["cpu"])
    env.update(only(docs, "ConfigMap")["data"])
    # No Secret here: the API key file is the one thing this test leaves out.
    env.pop("AIROBOROS_API_KEY_FILE", None)
    return env


def writable_paths(docs: list[dict]) -> list[str]:
    deployment = only(docs, "Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    return [
        mount["mountPath"]
        for mount in server_container(deployment)["volumeMounts"]
        if "emptyDir" in volumes[mount["name"]]
    ]


def bwrap_arguments(paths: list[str]) -> list[str]:
    """A read-only root with a fresh tmpfs at each path (and nowhere else)."""
    args = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--die-with-parent"]
    for path in paths:
        parent = str(Path(path).parent)
        if Path(path).exists() or parent in ("/", "/dev"):
            args += ["--tmpfs", path]
        else:
            # Make the mount point inside a throw-away tmpfs over its parent, then put the parent
            # back to read-only so only `path` itself is writable, as in the pod.
            args += ["--tmpfs", parent, "--dir", path, "--tmpfs", path, "--remount-ro", parent]
    return args


def test_cpu_overlay_runs_with_a_read_only_root_filesystem() -> None:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        pytest.fail(
            "bubblewrap is not installed: `make deploy-tools` installs it as root "
            "(or run `sudo apt-get install bubblewrap`)",
            pytrace=False,
        )
    docs = documents(render("cpu"))
    assert server_container(only(docs, "Deployment"))["securityContext"]["readOnlyRootFilesystem"] is True
    paths = writable_paths(docs)
    assert {"/var/cache/airoboros", "/tmp", "/home/airoboros", "/dev/shm"} <= set(paths)

    port = free_port()
    env = {**os.environ, **pod_environment(docs)}
    command = [
        bwrap, *bwrap_arguments(paths), "--chdir", str(REPO_ROOT),
        sys.executable, "-m", "server", "serve", "--host", "127.0.0.1", "--port", str(port),
    ]
    log = tempfile.NamedTemporaryFile(prefix="airoboros-readonly-", suffix=".log", delete=False)
    process = subprocess.Popen(
        command, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    server = RunningServer(process=process, port=port, log_path=Path(log.name))
    try:
        wait_until_ready(server)
        model = httpx.get(f"{server.base_url}/v1/models", timeout=10).json()["data"][0]["id"]
        response = httpx.post(
            f"{server.base_url}/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "Count to twenty."}], "max_tokens": 8},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"]
        assert "Read-only file system" not in server.log_text()
    finally:
        stop_server(server)
