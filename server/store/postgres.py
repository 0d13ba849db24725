"""The shared response store: PostgreSQL through psycopg 3, for several replicas.

Every replica connects to the same database, so turn 2 finds turn 1 whichever replica served
it. The connection string is libpq's: a password may come from `PGPASSWORD` or a `.pgpass` file
instead of the URL. A database that is down makes stored operations fail (503) and is tried
again on the next one; stateless requests never touch it.
"""

from __future__ import annotations

from typing import Any

from server.store.base import StoreLimits
from server.store.sql import Dialect, SQLResponseStore

CONNECT_TIMEOUT_S = 5
# A statement that waits longer than this (a lock held by a stuck replica) fails instead.
STATEMENT_TIMEOUT_MS = 10_000
# Any fixed number, the same in every replica: one of them creates the schema at a time.
SCHEMA_LOCK_KEY = 0x41524F42


def _connect(url: str) -> Any:
    import psycopg

    return psycopg.connect(
        url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
        options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}", application_name="airoboros-server",
    )


def postgres_store(url: str, limits: StoreLimits) -> SQLResponseStore:
    import psycopg

    dialect = Dialect(
        name="postgresql",
        connect=lambda: _connect(url),
        mark="%s",
        begin_write="BEGIN",
        errors=(psycopg.Error, OSError),
        schema_lock=f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK_KEY})",
    )
    return SQLResponseStore(dialect, limits)
