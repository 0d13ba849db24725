"""A PostgreSQL server of the test's own: initdb in a temporary directory, on a loopback port.

Debian's `postgresql` package (installed by `make test` when missing: deploy/checks/install-tools.sh)
gives the binaries; its own service is never used. PostgreSQL refuses to run as root, so under
root the cluster runs as the package's `postgres` user (through `runuser`). Trust authentication
on 127.0.0.1 only: a throw-away cluster that lives for one test module.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.server import LOOPBACK, free_port

DATABASE = "responses"
ROLE = "airoboros"
START_TIMEOUT_S = 120


def postgres_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's binaries, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class PostgresCluster:
    bin_dir: Path
    directory: Path
    port: int
    user: str | None  # who runs it (None: this process's user)

    @property
    def url(self) -> str:
        return f"postgresql://{ROLE}@{LOOPBACK}:{self.port}/{DATABASE}"

    def _run(self, tool: str, *args: str, timeout: float = START_TIMEOUT_S) -> None:
        command = [str(self.bin_dir / tool), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.directory)
        if result.returncode != 0:
            log = (self.directory / "server.log")
            raise RuntimeError(
                f"{tool} failed ({result.returncode}): {result.stderr[-2000:]}"
                + (f"\n{log.read_text()[-2000:]}" if log.exists() else "")
            )

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = f"-c listen_addresses={LOOPBACK} -p {self.port} -k {self.directory} -c fsync=off"
        self._run("pg_ctl", "start", "-w", "-t", str(START_TIMEOUT_S), "-D", str(self.directory / "data"),
                  "-l", str(self.directory / "server.log"), "-o", options)

    def stop(self) -> None:
        """Stop it at once (connections are cut, as when a database server goes away)."""
        self._run("pg_ctl", "stop", "-w", "-m", "immediate", "-D", str(self.directory / "data"))


@contextlib.contextmanager
def postgres_cluster() -> Iterator[PostgresCluster]:
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed: run `make test-tools` (Debian's postgresql)")
    directory = Path(tempfile.mkdtemp(prefix="airoboros-postgres-"))
    user = None
    if os.geteuid() == 0:
        user = "postgres"
        entry = pwd.getpwnam(user)
        os.chown(directory, entry.pw_uid, entry.pw_gid)
    cluster = PostgresCluster(bin_dir, directory, free_port(), user)
    try:
        cluster._run("initdb", "-D", str(directory / "data"), "-U", ROLE, "--auth=trust", "--no-sync", "-E", "UTF8")
        cluster.start()
        cluster._run("createdb", "-h", LOOPBACK, "-p", str(cluster.port), "-U", ROLE, DATABASE)
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)
