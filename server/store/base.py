"""What a response store keeps, and the one interface every backend implements.

A backend is synchronous and used from one thread at a time (`server.store.archive` runs it on
a thread of its own, so the event loop never waits on a disk or a database). Each `put` and
`delete` is one transaction: a reader sees a response whole or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


class StoreUnavailable(Exception):
    """The store cannot be reached or written now (a database gone away, a full disk)."""


@dataclass(frozen=True)
class StoredResponse:
    id: str
    previous_id: str | None
    created_at: float
    status: str
    response: dict[str, Any]  # the `response` object as the client got it
    input_items: list[dict[str, Any]]  # this request's own input items, with their ids


@dataclass(frozen=True)
class StoreTotals:
    responses: int
    bytes: int


@dataclass(frozen=True)
class PutResult:
    totals: StoreTotals
    # Responses removed to make room (oldest first), and those found past their time to live.
    evicted: int = 0
    expired: int = 0
    written: bool = True  # False: a conditional write found the status changed


@dataclass(frozen=True)
class StoreLimits:
    ttl_s: float
    max_bytes: int


class ResponseStore(Protocol):
    """One backend: SQLite (`server.store.sqlite`) or PostgreSQL (`server.store.postgres`)."""

    def open(self) -> StoreTotals:
        """Create the schema if needed; the totals as they are."""
        ...

    def put(
        self, record: StoredResponse, now: float, *, owner: str | None = None,
        only_if_status: tuple[str, ...] | None = None,
    ) -> PutResult:
        """Write `record` (replacing one with its id; with `only_if_status`, only if the stored
        one has such a status), drop what expired, evict the oldest beyond the byte bound: one
        transaction. `owner` names the process running a background response."""
        ...

    def cancel(self, response_id: str, now: float) -> StoredResponse | None:
        ...

    def heartbeat(self, response_id: str, now: float) -> str | None:
        ...

    def mark_stale(self, owner: str, stale_before: float) -> int:
        ...

    def get(self, response_id: str, now: float) -> StoredResponse | None:
        """The response, or None when unknown, deleted or expired."""
        ...

    def delete(self, response_id: str, now: float) -> tuple[bool, StoreTotals]:
        """Remove the response; whether it was there (unexpired), and the totals after."""
        ...

    def append_events(self, response_id: str, events: list[tuple[int, str]], now: float) -> bool:
        """Keep a streamed background response's events (sequence number, SSE frame) for a
        client that resumes; False when the response is gone."""
        ...

    def events_after(self, response_id: str, after: int, now: float) -> tuple[str | None, list[tuple[int, str]]]:
        """The response's status (None when gone) and its events after sequence number `after`."""
        ...

    def totals(self) -> StoreTotals:
        ...

    def close(self) -> None:
        ...


@dataclass
class Chain:
    """A `previous_response_id` chain, oldest first; `missing` names the first id not found."""

    responses: list[StoredResponse] = field(default_factory=list)
    missing: str | None = None
