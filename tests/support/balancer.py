"""nginx (Debian's package) as the load balancer in front of server replicas on loopback.

It plays the part of a Kubernetes Service's endpoints plus an ingress: replicas are put in and
taken out by rewriting the upstream list and reloading (SIGHUP to the master). nginx's reload is
graceful: old workers stop accepting, finish the requests and streams they carry, then exit,
while new workers take new connections with the new list.

Retry policy (what the hard-kill test measures): a request is sent to the next replica when
connecting fails, the replica closes or errors before sending a response header, or it answers
502/503 (not ready, draining, engine dead). POST is retried too (`non_idempotent`): a request
that got no response header was never answered. Once a response has started, nothing can be
retried: a replica that dies mid-stream truncates that stream.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx

from harness.server import free_port

NGINX_INSTALL_HINT = (
    "nginx is not installed: `make deploy-tools` installs Debian's package when run as root; "
    "otherwise run `sudo apt-get install nginx`"
)


def find_nginx() -> str | None:
    for candidate in (os.environ.get("NGINX"), shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


class Nginx:
    """One nginx master on 127.0.0.1:<port>, its config, logs and pid under `workdir`."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.generation = 0
        self.upstreams: list[int] = []
        self.process: subprocess.Popen | None = None
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (workdir / "temp" / sub).mkdir(parents=True, exist_ok=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def conf_path(self) -> Path:
        return self.workdir / "nginx.conf"

    @property
    def access_log(self) -> Path:
        return self.workdir / "access.log"

    @property
    def error_log(self) -> Path:
        return self.workdir / "error.log"

    def _config(self) -> str:
        w = self.workdir
        servers = "\n".join(
            f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=10s;" for port in self.upstreams
        )
        # As root, nginx would run its workers as `nobody`, who cannot enter pytest's private
        # temporary directory; run them as the invoking user instead (loopback only).
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
        return f"""
{user}
daemon off;
master_process on;
worker_processes 1;
pid {w}/nginx.pid;
error_log {self.error_log} info;
events {{ worker_connections 1024; }}
http {{
    log_format upstreams '$msec $status $request_time "$upstream_addr" "$upstream_status" $request_uri';
    access_log {self.access_log} upstreams;
    client_body_temp_path {w}/temp/client_body;
    proxy_temp_path {w}/temp/proxy;
    fastcgi_temp_path {w}/temp/fastcgi;
    uwsgi_temp_path {w}/temp/uwsgi;
    scgi_temp_path {w}/temp/scgi;
    # Below the servers' keep-alive (75 s): the balancer closes idle connections first.
    keepalive_timeout 60s;

    upstream airoboros {{
{servers}
        keepalive 16;
        keepalive_timeout 60s;
    }}
    server {{
        listen 127.0.0.1:{self.port};
        # Which configuration answers: the test waits for a reload to take effect.
        location = /__balancer/generation {{
            return 200 "{self.generation}";
        }}
        location / {{
            proxy_pass http://airoboros;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # Server-sent events pass through as they come.
            proxy_buffering off;
            proxy_request_buffering on;
            proxy_connect_timeout 2s;
            proxy_read_timeout 120s;
            proxy_next_upstream error timeout http_502 http_503 non_idempotent;
            proxy_next_upstream_tries 3;
            proxy_next_upstream_timeout 15s;
            # Every replica that was tried, in order: "A, B" means A failed and B answered.
            add_header X-Upstream $upstream_addr always;
        }}
    }}
}}
"""

    def _write_config(self) -> None:
        self.generation += 1
        self.conf_path.write_text(self._config())
        test = subprocess.run(
            [self.binary, "-t", "-p", str(self.workdir), "-c", str(self.conf_path), "-e", str(self.error_log)],
            capture_output=True, text=True, timeout=30,
        )
        if test.returncode != 0:
            raise RuntimeError(f"nginx rejected its configuration:\n{test.stderr}")

    def start(self, upstreams: list[int]) -> None:
        self.upstreams = list(upstreams)
        self._write_config()
        self.process = subprocess.Popen(
            [self.binary, "-p", str(self.workdir), "-c", str(self.conf_path), "-e", str(self.error_log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._wait_for_generation()

    def set_upstreams(self, upstreams: list[int]) -> None:
        """Rewrite the replica list and reload; return once new connections use it."""
        assert self.process is not None and self.process.poll() is None, "nginx is not running"
        self.upstreams = list(upstreams)
        self._write_config()
        self.process.send_signal(signal.SIGHUP)
        self._wait_for_generation()

    def _wait_for_generation(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                # A fresh connection each time: the old workers keep their open ones.
                response = httpx.get(
                    f"{self.base_url}/__balancer/generation", timeout=2, headers={"Connection": "close"}
                )
                if response.text == str(self.generation):
                    return
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"nginx exited:\n{self.error_log.read_text(errors='replace')[-4000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"nginx did not load configuration {self.generation} in {timeout} s")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful shutdown
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
