"""The response store in SQL, for every backend: SQLite and PostgreSQL differ only in their
`Dialect` (how to connect, the parameter mark, how a write transaction begins).

One table of responses, one of the events of streamed background responses (kept for a client
that resumes the stream, counted in their response's bytes), one row of totals (responses and
bytes) kept in the same transactions, so the byte bound is checked without summing the tables. A write takes the totals row first: on
PostgreSQL, writers from several replicas queue on it, so no two evict the same space twice.
Records past their time to live are invisible at once and deleted by the next write.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from server.store.base import PutResult, StoreLimits, StoredResponse, StoreTotals, StoreUnavailable

logger = logging.getLogger(__name__)
T = TypeVar("T")

TABLE = "airoboros_responses"
TOTALS = "airoboros_response_totals"
EVENTS = "airoboros_response_events"
EVENTS_PER_READ = 1000  # a resumed stream reads its backlog in pages of this many
EVICTION_BATCH = 64
RUNNING = ("queued", "in_progress")  # a background response not finished yet

SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        id TEXT PRIMARY KEY,
        previous_id TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        status TEXT NOT NULL,
        bytes BIGINT NOT NULL,
        owner TEXT,
        heartbeat DOUBLE PRECISION,
        response TEXT NOT NULL,
        input_items TEXT NOT NULL
    )""",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_created ON {TABLE} (created_at)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_expires ON {TABLE} (expires_at)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_running ON {TABLE} (status) WHERE status IN ('queued', 'in_progress')",
    f"""CREATE TABLE IF NOT EXISTS {TOTALS} (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        responses BIGINT NOT NULL,
        bytes BIGINT NOT NULL
    )""",
    f"INSERT INTO {TOTALS} (one, responses, bytes) VALUES (1, 0, 0) ON CONFLICT DO NOTHING",
    f"""CREATE TABLE IF NOT EXISTS {EVENTS} (
        response_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        bytes BIGINT NOT NULL,
        frame TEXT NOT NULL,
        PRIMARY KEY (response_id, seq)
    )""",
)


def retried_on_a_new_connection(method: Callable[..., T]) -> Callable[..., T]:
    """A call that failed on a connection made earlier runs once more on a new one: a database
    restarted since then (its connections cut) costs a reconnect, not a failed request. Every
    operation may run twice: writes replace by id, cancels and heartbeats repeat harmlessly."""

    @functools.wraps(method)
    def call(self: "SQLResponseStore", *args: Any, **kwargs: Any) -> T:
        reused = self._connection is not None
        try:
            return method(self, *args, **kwargs)
        except StoreUnavailable:
            if not reused:
                raise
            return method(self, *args, **kwargs)

    return call


@dataclass(frozen=True)
class Dialect:
    name: str
    connect: Callable[[], Any]  # a DB-API connection in autocommit mode
    mark: str  # the parameter placeholder
    begin_write: str  # starts a transaction that will write
    errors: tuple[type[BaseException], ...]  # the driver's failures: the store is unavailable
    schema_lock: str | None = None  # serialises schema creation between replicas


class SQLResponseStore:
    """`ResponseStore` on a DB-API connection; one thread at a time (`StoreArchive` sees to it)."""

    def __init__(self, dialect: Dialect, limits: StoreLimits) -> None:
        self.dialect = dialect
        self.limits = limits
        self._connection: Any = None

    # --- plumbing -------------------------------------------------------------------------

    def _sql(self, statement: str) -> str:
        return statement.replace("?", self.dialect.mark)

    def _connect(self) -> Any:
        """The connection, made (with the schema, if new) on first use and after a failure, so
        a database that comes back is used again without a restart."""
        if self._connection is None:
            connection = self.dialect.connect()
            try:
                cursor = connection.cursor()
                cursor.execute(self.dialect.begin_write)
                if self.dialect.schema_lock:
                    cursor.execute(self.dialect.schema_lock)
                for statement in SCHEMA:
                    cursor.execute(statement)
                cursor.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(Exception):
                    connection.close()
                raise
            self._connection = connection
        return self._connection

    def _drop_connection(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None

    @contextlib.contextmanager
    def _cursor(self, begin: str | None = None) -> Iterator[Any]:
        """A cursor, in a transaction when `begin` is given; a driver failure drops the
        connection (the next call connects again) and becomes `StoreUnavailable`."""
        try:
            cursor = self._connect().cursor()
            if begin is None:
                yield cursor
                return
            cursor.execute(begin)
            try:
                yield cursor
            except BaseException:
                with contextlib.suppress(*self.dialect.errors):
                    cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT")
        except self.dialect.errors as error:
            # The error's class only: a driver message may quote the statement's values.
            logger.warning("responses store (%s) failed: %s", self.dialect.name, type(error).__name__)
            self._drop_connection()
            raise StoreUnavailable(f"the {self.dialect.name} responses store failed") from error

    def _totals(self, cursor: Any) -> StoreTotals:
        cursor.execute(f"SELECT responses, bytes FROM {TOTALS} WHERE one = 1")
        responses, size = cursor.fetchone()
        return StoreTotals(int(responses), int(size))

    def _count_removed(self, cursor: Any, removed: list[tuple[Any, ...]]) -> None:
        """Responses deleted (rows of id and bytes): their events go too, and the totals drop."""
        if removed:
            cursor.executemany(self._sql(f"DELETE FROM {EVENTS} WHERE response_id = ?"), [(row[0],) for row in removed])
            cursor.execute(
                self._sql(f"UPDATE {TOTALS} SET responses = responses - ?, bytes = bytes - ? WHERE one = 1"),
                (len(removed), sum(int(row[1]) for row in removed)),
            )

    # --- the interface --------------------------------------------------------------------

    @retried_on_a_new_connection
    def open(self) -> StoreTotals:
        return self.totals()

    def _lock_totals(self, cursor: Any) -> None:
        # The totals row first: concurrent writers wait here, not halfway through.
        cursor.execute(f"UPDATE {TOTALS} SET responses = responses, bytes = bytes WHERE one = 1")

    def _status(self, cursor: Any, response_id: str) -> str | None:
        cursor.execute(self._sql(f"SELECT status FROM {TABLE} WHERE id = ?"), (response_id,))
        row = cursor.fetchone()
        return None if row is None else row[0]

    @retried_on_a_new_connection
    def put(
        self, record: StoredResponse, now: float, *, owner: str | None = None,
        only_if_status: tuple[str, ...] | None = None,
    ) -> PutResult:
        response = json.dumps(record.response, separators=(",", ":"), ensure_ascii=False)
        items = json.dumps(record.input_items, separators=(",", ":"), ensure_ascii=False)
        size = len(response.encode()) + len(items.encode())
        with self._cursor(self.dialect.begin_write) as cursor:
            self._lock_totals(cursor)
            if only_if_status is not None and self._status(cursor, record.id) not in only_if_status:
                # Cancelled (or finished) meanwhile, perhaps by another replica: that stands.
                return PutResult(self._totals(cursor), written=False)
            # A streamed response's events stay with its new version, and count in its bytes.
            cursor.execute(self._sql(f"SELECT COALESCE(SUM(bytes), 0) FROM {EVENTS} WHERE response_id = ?"), (record.id,))
            size += int(cursor.fetchone()[0])
            cursor.execute(self._sql(f"DELETE FROM {TABLE} WHERE id = ? RETURNING bytes"), (record.id,))
            replaced = cursor.fetchall()
            if replaced:
                cursor.execute(
                    self._sql(f"UPDATE {TOTALS} SET responses = responses - 1, bytes = bytes - ? WHERE one = 1"),
                    (int(replaced[0][0]),),
                )
            cursor.execute(
                self._sql(
                    f"INSERT INTO {TABLE} (id, previous_id, created_at, expires_at, status, bytes, owner, "
                    "heartbeat, response, input_items) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                ),
                (record.id, record.previous_id, record.created_at, now + self.limits.ttl_s, record.status,
                 size, owner, now, response, items),
            )
            cursor.execute(
                self._sql(f"UPDATE {TOTALS} SET responses = responses + 1, bytes = bytes + ? WHERE one = 1"), (size,)
            )
            cursor.execute(self._sql(f"DELETE FROM {TABLE} WHERE expires_at <= ? RETURNING id, bytes"), (now,))
            expired = cursor.fetchall()
            self._count_removed(cursor, expired)
            evicted = self._evict(cursor, keep=record.id)
            return PutResult(self._totals(cursor), evicted=evicted, expired=len(expired))

    def _evict(self, cursor: Any, keep: str) -> int:
        """Delete the oldest responses until the bytes fit the bound (never `keep`, the one just
        written: a response larger than the whole bound stays until the next write)."""
        evicted = 0
        while self._totals(cursor).bytes > self.limits.max_bytes:
            cursor.execute(
                self._sql(f"SELECT id, bytes FROM {TABLE} WHERE id <> ? ORDER BY created_at, id LIMIT ?"),
                (keep, EVICTION_BATCH),
            )
            oldest = cursor.fetchall()
            if not oldest:
                break
            excess = self._totals(cursor).bytes - self.limits.max_bytes
            victims = []
            for response_id, size in oldest:
                victims.append((response_id,))
                excess -= int(size)
                if excess <= 0:
                    break
            cursor.executemany(self._sql(f"DELETE FROM {TABLE} WHERE id = ?"), victims)
            self._count_removed(cursor, oldest[: len(victims)])
            evicted += len(victims)
        return evicted

    @retried_on_a_new_connection
    def get(self, response_id: str, now: float) -> StoredResponse | None:
        with self._cursor() as cursor:
            cursor.execute(
                self._sql(
                    f"SELECT id, previous_id, created_at, status, response, input_items FROM {TABLE} "
                    "WHERE id = ? AND expires_at > ?"
                ),
                (response_id, now),
            )
            row = cursor.fetchone()
        if row is None:
            return None
        rid, previous_id, created_at, status, response, items = row
        return StoredResponse(rid, previous_id, float(created_at), status, json.loads(response), json.loads(items))

    def _restate(self, cursor: Any, response_id: str, status: str, error: dict[str, Any] | None) -> None:
        """Set a stored response's status, in its column and in its `response` object."""
        cursor.execute(self._sql(f"SELECT response FROM {TABLE} WHERE id = ?"), (response_id,))
        response = json.loads(cursor.fetchone()[0])
        response["status"] = status
        if error is not None:
            response["error"] = error
        cursor.execute(
            self._sql(f"UPDATE {TABLE} SET status = ?, response = ? WHERE id = ?"),
            (status, json.dumps(response, separators=(",", ":"), ensure_ascii=False), response_id),
        )

    @retried_on_a_new_connection
    def cancel(self, response_id: str, now: float) -> StoredResponse | None:
        """Mark a queued or running response `cancelled` (its runner, on any replica, sees it on
        its next heartbeat); the response as it now is, or None when unknown."""
        with self._cursor(self.dialect.begin_write) as cursor:
            self._lock_totals(cursor)
            if self._status(cursor, response_id) in RUNNING:
                self._restate(cursor, response_id, "cancelled", None)
        return self.get(response_id, now)

    @retried_on_a_new_connection
    def heartbeat(self, response_id: str, now: float) -> str | None:
        """A running response's runner is alive; the status it has now (`cancelled`: stop)."""
        with self._cursor() as cursor:
            cursor.execute(
                self._sql(f"UPDATE {TABLE} SET heartbeat = ? WHERE id = ? RETURNING status"), (now, response_id)
            )
            row = cursor.fetchone()
        return None if row is None else row[0]

    @retried_on_a_new_connection
    def mark_stale(self, owner: str, stale_before: float) -> int:
        """Running responses nobody runs any more: `owner`'s own (this host's earlier process),
        and anyone's whose heartbeat stopped before `stale_before`. They become `failed`."""
        with self._cursor(self.dialect.begin_write) as cursor:
            self._lock_totals(cursor)
            cursor.execute(
                self._sql(
                    f"SELECT id FROM {TABLE} WHERE status IN ('queued', 'in_progress') "
                    "AND (owner = ? OR heartbeat < ?)"
                ),
                (owner, stale_before),
            )
            stale = [row[0] for row in cursor.fetchall()]
            error = {"code": "server_error", "message": "The server stopped before this response finished."}
            for response_id in stale:
                self._restate(cursor, response_id, "failed", error)
            return len(stale)

    @retried_on_a_new_connection
    def delete(self, response_id: str, now: float) -> tuple[bool, StoreTotals]:
        with self._cursor(self.dialect.begin_write) as cursor:
            self._lock_totals(cursor)
            cursor.execute(
                self._sql(f"DELETE FROM {TABLE} WHERE id = ? RETURNING id, bytes, expires_at"), (response_id,)
            )
            removed = cursor.fetchall()
            self._count_removed(cursor, removed)
            # An expired one was already gone for every reader: deleting it is a 404 too.
            existed = bool(removed) and float(removed[0][2]) > now
            return existed, self._totals(cursor)

    @retried_on_a_new_connection
    def append_events(self, response_id: str, events: list[tuple[int, str]], now: float) -> bool:
        """Add a streamed response's events (sequence number, SSE frame); False when the response
        is gone (deleted, expired or evicted), and nothing is written. A retried call writes
        nothing twice: an event already there is skipped."""
        with self._cursor(self.dialect.begin_write) as cursor:
            self._lock_totals(cursor)
            cursor.execute(self._sql(f"SELECT 1 FROM {TABLE} WHERE id = ? AND expires_at > ?"), (response_id, now))
            if cursor.fetchone() is None:
                return False
            rows = [(response_id, seq, len(frame.encode()), frame) for seq, frame in events]
            cursor.executemany(
                self._sql(f"INSERT INTO {EVENTS} (response_id, seq, bytes, frame) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING"),
                rows,
            )
            size = sum(row[2] for row in rows)
            cursor.execute(self._sql(f"UPDATE {TABLE} SET bytes = bytes + ? WHERE id = ?"), (size, response_id))
            cursor.execute(self._sql(f"UPDATE {TOTALS} SET bytes = bytes + ? WHERE one = 1"), (size,))
            self._evict(cursor, keep=response_id)
            return True

    @retried_on_a_new_connection
    def events_after(self, response_id: str, after: int, now: float) -> tuple[str | None, list[tuple[int, str]]]:
        """A streamed response's status (None when gone) and its events after sequence number
        `after`, in order, at most `EVENTS_PER_READ`."""
        with self._cursor() as cursor:
            cursor.execute(self._sql(f"SELECT status FROM {TABLE} WHERE id = ? AND expires_at > ?"), (response_id, now))
            row = cursor.fetchone()
            if row is None:
                return None, []
            cursor.execute(
                self._sql(f"SELECT seq, frame FROM {EVENTS} WHERE response_id = ? AND seq > ? ORDER BY seq LIMIT ?"),
                (response_id, after, EVENTS_PER_READ),
            )
            return row[0], [(int(seq), frame) for seq, frame in cursor.fetchall()]

    @retried_on_a_new_connection
    def totals(self) -> StoreTotals:
        with self._cursor() as cursor:
            return self._totals(cursor)

    def close(self) -> None:
        self._drop_connection()
