"""The embedded response store: one SQLite file, in WAL mode.

WAL lets readers go on while a response is written, and a committed write survives the process
being killed (`synchronous=NORMAL` gives up only the last commits to a power loss, not to a
crash). The file and its directory are created owner-only: they hold prompts and answers.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from server.store.base import StoreLimits
from server.store.sql import Dialect, SQLResponseStore

BUSY_TIMEOUT_MS = 10_000  # another process (a second server on the same file) writing


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Created owner-only before SQLite opens it; SQLite gives its -wal and -shm files the same mode.
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    connection = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return connection


def sqlite_store(path: Path, limits: StoreLimits) -> SQLResponseStore:
    dialect = Dialect(
        name="sqlite",
        connect=lambda: _connect(path),
        mark="?",
        # Takes the write lock at once: no upgrade from a read lock that could fail mid-write.
        begin_write="BEGIN IMMEDIATE",
        errors=(sqlite3.Error, OSError),
    )
    return SQLResponseStore(dialect, limits)
