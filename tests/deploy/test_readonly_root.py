"""The cpu overlay's `readOnlyRootFilesystem: true` holds: the real server starts, converts the
embedded default model and answers with the root filesystem read-only and only the pod's emptyDir
mount paths writable.

No container runtime exists here, so bubblewrap (Debian's `bubblewrap`) plays the part: the host's
root bound read-only, a tmpfs at each emptyDir mountPath of the rendered cpu Deployment, and the
environment the pod gets (the Dockerfile's `cpu` stage ENV, then the ConfigMap).

In the image the code and its Python environment are part of the read-only root. Here they are
this checkout and its virtual environment: when one of them lies under a path the pod mounts an
emptyDir on (a checkout under /tmp), it is bound back, read-only, on top of that mount, so the
server still finds its code and nothing of the checkout becomes writable.
"""

from __future__ import annotations

import os
import shutil
import sys
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
from harness.server import REPO_ROOT, free_port, serve_command, start_process, stop_server

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


def bwrap_arguments(paths: list[str], code: list[Path]) -> list[str]:
    """A read-only root with a fresh tmpfs at each path (and nowhere else); each of `code` that a
    tmpfs would hide is bound back, read-only, on top of it."""
    args = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--die-with-parent"]
    for path in paths:
        parent = str(Path(path).parent)
        if Path(path).exists() or parent in ("/", "/dev"):
            args += ["--tmpfs", path]
        else:
            # Make the mount point inside a throw-away tmpfs over its parent, then put the parent
            # back to read-only so only `path` itself is writable, as in the pod.
            args += ["--tmpfs", parent, "--dir", path, "--tmpfs", path, "--remount-ro", parent]
    for directory in code:
        if hidden_by(directory, paths):
            args += ["--ro-bind", str(directory), str(directory)]
    return args


def hidden_by(directory: Path, paths: list[str]) -> bool:
    return any(directory == Path(path) or Path(path) in directory.parents for path in paths)


def code_directories() -> list[Path]:
    """What the server runs from: the checkout and the Python environment (real paths)."""
    return sorted({REPO_ROOT.resolve(), Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()})


def test_a_checkout_under_a_writable_mount_is_bound_back_read_only() -> None:
    paths = ["/tmp", "/var/cache/airoboros"]
    args = bwrap_arguments(paths, [Path("/tmp/work/checkout"), Path("/opt/venv")])
    assert args[-3:] == ["--ro-bind", "/tmp/work/checkout", "/tmp/work/checkout"]
    assert "/opt/venv" not in args  # not under any mount: the read-only root already shows it
    assert args.index("--ro-bind", 1) > args.index("/tmp")  # on top of the tmpfs, not under it


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
    command = [bwrap, *bwrap_arguments(paths, code_directories()), "--chdir", str(REPO_ROOT), *serve_command(port=port)]
    server = start_process(command, port=port, env=env)
    try:
        response = httpx.post(
            f"{server.base_url}/v1/chat/completions",
            json={"model": server.model, "messages": [{"role": "user", "content": "Count to twenty."}], "max_tokens": 8},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"]
        assert "Read-only file system" not in server.log_text()
    finally:
        stop_server(server)
